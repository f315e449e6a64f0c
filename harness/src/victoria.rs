//! VictoriaMetrics and vmagent on 127.0.0.1: their command lines, and the Prometheus scrape
//! config both read.

use crate::{require_tool, Process};
use std::path::Path;
use std::process::Command;

/// Debian's package holds both binaries.
pub const INSTALL: &str = "apt-get install victoria-metrics";

/// A scrape config polling `targets` (`host:port`) every `interval_seconds` as job `job`.
pub fn scrape_config<T: std::fmt::Display>(
    job: &str,
    targets: &[T],
    interval_seconds: u64,
) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|target| format!("\"{target}\""))
        .collect();
    format!(
        "global: {{ scrape_interval: {interval_seconds}s }}\nscrape_configs:\n  - job_name: {job}\n    scrape_interval: {interval_seconds}s\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

/// `http://127.0.0.1:PORT/health`, which both answer with 200 once they serve.
pub fn health_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/health")
}

/// Starts a VictoriaMetrics single node on `127.0.0.1:port`, storing into `data`, scraping as
/// `scrape` says. Queries see samples up to 1 s old (`-search.latencyOffset=1s`) and nothing is
/// cached, so a check right after a scrape sees it.
pub fn spawn_victoria_metrics(
    data: &Path,
    port: u16,
    scrape: &Path,
    log: &Path,
) -> anyhow::Result<Process> {
    let binary = require_tool("victoria-metrics", INSTALL)?;
    Process::spawn(
        "victoria-metrics",
        Command::new(binary)
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-promscrape.config={}", scrape.display()))
            .args([
                "-search.latencyOffset=1s",
                "-search.disableCache",
                "-loggerLevel=WARN",
            ]),
        log,
    )
}

/// Starts vmagent on `127.0.0.1:port`, scraping as `scrape` says and remote-writing to
/// `write_url` every `flush_interval` (`1s`, `200ms`), buffering into `data`.
pub fn spawn_vmagent(
    scrape: &Path,
    write_url: &str,
    flush_interval: &str,
    data: &Path,
    port: u16,
    log: &Path,
) -> anyhow::Result<Process> {
    let binary = require_tool("vmagent", INSTALL)?;
    Process::spawn(
        "vmagent",
        Command::new(binary)
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg(format!("-remoteWrite.url={write_url}"))
            .arg(format!("-remoteWrite.tmpDataPath={}", data.display()))
            .arg(format!("-remoteWrite.flushInterval={flush_interval}"))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-loggerLevel=WARN"),
        log,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_config_lists_every_target() {
        assert_eq!(
            scrape_config("fleet", &["127.0.0.1:1", "127.0.0.1:2"], 5),
            "global: { scrape_interval: 5s }\nscrape_configs:\n  - job_name: fleet\n    scrape_interval: 5s\n    static_configs:\n      - targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n"
        );
    }
}
