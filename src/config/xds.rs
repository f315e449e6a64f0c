//! The `xds:` and `admin:` sections: the two listeners, the xDS port's limits, keepalive, drain
//! and TLS.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{duration, problem, tls, Problem};

/// `xds:` keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// Address the gRPC server binds, e.g. `127.0.0.1:18000` or `0.0.0.0:18000`.
    #[serde(default = "default_xds_listen")]
    pub listen: String,
    /// Most resource names one stream may subscribe to; a request over it is refused with
    /// `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_max_resource_names")]
    pub max_resource_names: usize,
    /// Most open TCP connections; further ones are closed at once (and counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open xDS streams; further ones are refused with `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Largest gRPC request message accepted, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval (dead peers are found and their streams freed).
    pub keepalive_interval: Option<duration::ConfigDuration>,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Option<duration::ConfigDuration>,
    /// On SIGTERM: stop accepting, keep serving open streams this long, then exit.
    pub drain_period: Option<duration::ConfigDuration>,
    /// Serve the `Inspect` API on this port.
    #[serde(default = "enabled")]
    pub inspect: bool,
    /// Serve gRPC reflection on this port.
    #[serde(default = "enabled")]
    pub reflection: bool,
    /// TLS, or mutual TLS, on this port.
    pub tls: Option<XdsTlsConfig>,
}

/// `xds.tls:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XdsTlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: String,
    /// PEM private key of the server certificate.
    pub key_file: String,
    /// PEM CA bundle for client certificates; set it to require mutual TLS.
    pub client_ca_file: Option<String>,
    /// Client identities served (URI SANs such as SPIFFE IDs, or `dns:NAME`); empty: any valid client.
    #[serde(default)]
    pub allowed_identities: Vec<String>,
    /// How often the files are checked for changes (default 5s).
    pub reload_interval: Option<duration::ConfigDuration>,
    /// If set, only clients with one of these identities may call `Inspect` and reflection.
    #[serde(default)]
    pub operator_identities: Vec<String>,
}

/// `admin:` keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin HTTP server binds.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

fn default_xds_listen() -> String {
    "127.0.0.1:18000".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:18080".into()
}

fn default_max_resource_names() -> usize {
    10_000
}

fn default_max_connections() -> usize {
    20_000
}

fn default_max_streams() -> usize {
    50_000
}

fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}

fn enabled() -> bool {
    true
}

/// Default HTTP/2 keepalive interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Default HTTP/2 keepalive timeout.
pub const DEFAULT_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Default drain period on SIGTERM.
pub const DEFAULT_DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl XdsConfig {
    /// The keepalive interval in force.
    pub fn keepalive_interval(&self) -> std::time::Duration {
        self.keepalive_interval
            .map(|value| value.0)
            .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL)
    }

    /// The keepalive timeout in force.
    pub fn keepalive_timeout(&self) -> std::time::Duration {
        self.keepalive_timeout
            .map(|value| value.0)
            .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT)
    }

    /// The drain period in force.
    pub fn drain_period(&self) -> std::time::Duration {
        self.drain_period
            .map(|value| value.0)
            .unwrap_or(DEFAULT_DRAIN_PERIOD)
    }
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            listen: default_xds_listen(),
            max_resource_names: default_max_resource_names(),
            max_connections: default_max_connections(),
            max_streams: default_max_streams(),
            max_message_bytes: default_max_message_bytes(),
            keepalive_interval: None,
            keepalive_timeout: None,
            drain_period: None,
            inspect: true,
            reflection: true,
            tls: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// Parses both listen addresses (they must differ) and checks the xDS limits; `None` for an
/// address that does not parse.
pub(super) fn validate_listeners(
    xds: &XdsConfig,
    admin: &AdminConfig,
    problems: &mut Vec<Problem>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let xds_listen = parse_listen("xds.listen", &xds.listen, problems);
    let admin_listen = parse_listen("admin.listen", &admin.listen, problems);
    if let (Some(xds), Some(admin)) = (xds_listen, admin_listen) {
        if xds == admin && xds.port() != 0 {
            problems.push(problem(
                "admin.listen",
                format!("must differ from xds.listen, both are {xds}"),
            ));
        }
    }
    if xds.max_resource_names == 0 {
        problems.push(problem(
            "xds.max_resource_names",
            "expected at least 1, got 0",
        ));
    }
    (xds_listen, admin_listen)
}

pub(super) fn validate_tls(tls: &XdsTlsConfig, problems: &mut Vec<Problem>) -> tls::TlsSettings {
    let mut file = |field: &str, path: &str| {
        if !Path::new(path).is_file() {
            problems.push(problem(
                format!("xds.tls.{field}"),
                format!("no such file: {path}"),
            ));
        }
        PathBuf::from(path)
    };
    let cert_file = file("cert_file", &tls.cert_file);
    let key_file = file("key_file", &tls.key_file);
    let client_ca_file = tls
        .client_ca_file
        .as_deref()
        .map(|path| file("client_ca_file", path));
    if client_ca_file.is_none() && !tls.operator_identities.is_empty() {
        problems.push(problem(
            "xds.tls.operator_identities",
            "needs xds.tls.client_ca_file: identities come from client certificates",
        ));
    }
    if client_ca_file.is_none() && !tls.allowed_identities.is_empty() {
        problems.push(problem(
            "xds.tls.allowed_identities",
            "needs xds.tls.client_ca_file: identities come from client certificates",
        ));
    }
    let reload_interval = tls
        .reload_interval
        .map(|value| value.0)
        .unwrap_or(std::time::Duration::from_secs(5));
    if reload_interval.is_zero() {
        problems.push(problem(
            "xds.tls.reload_interval",
            "expected a duration above zero",
        ));
    }
    tls::TlsSettings {
        cert_file,
        key_file,
        client_ca_file,
        allowed_identities: tls.allowed_identities.clone(),
        reload_interval,
    }
}

fn parse_listen(field: &str, value: &str, problems: &mut Vec<Problem>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(address) => Some(address),
        Err(_) => {
            problems.push(problem(
                field,
                format!("expected IP:PORT such as 127.0.0.1:18000, got {value:?}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::problem_lines as problems;

    #[test]
    fn listeners_must_differ() {
        let found =
            problems("xds: { listen: \"127.0.0.1:1\" }\nadmin: { listen: \"127.0.0.1:1\" }\n");
        assert_eq!(
            found,
            vec!["admin.listen: must differ from xds.listen, both are 127.0.0.1:1"]
        );
    }
}
