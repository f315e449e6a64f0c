//! The YAML configuration: its shape, its defaults, and validation that names every bad field.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::Digest;

use crate::model::{Endpoint, HealthStatus, Locality};

pub mod adaptive;
pub mod duration;
pub mod kubernetes;
pub mod metrics;
pub mod promql;
pub mod reload;
pub mod templates;
pub mod tls;
pub mod warnings;
pub mod weighting;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gRPC listener for xDS, reflection, health and `Inspect`.
    #[serde(default)]
    pub xds: XdsConfig,
    /// The HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// How often weights are recomputed (default 10s).
    pub tick: Option<duration::ConfigDuration>,
    /// Where load samples come from.
    #[serde(default)]
    pub metrics: metrics::MetricsConfig,
    /// Weighting algorithm and knobs for every cluster.
    #[serde(default)]
    pub weighting: weighting::WeightingConfig,
    /// Static clusters: each is one EDS resource.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Endpoints discovered from Kubernetes EndpointSlices.
    #[serde(default)]
    pub kubernetes: kubernetes::KubernetesConfig,
}

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

/// One `clusters[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The EDS resource name Envoy asks for (`eds_cluster_config.service_name`, else the cluster
    /// name; Istio uses `outbound|PORT||HOST`).
    pub name: String,
    /// Kubernetes namespace, for `${namespace}` in queries and remote-write series selection.
    pub namespace: Option<String>,
    /// Container name, for `${container}`.
    pub container: Option<String>,
    /// Service name, for `${service}`.
    pub service: Option<String>,
    /// This cluster's tick (default: the global `tick`).
    pub tick: Option<duration::ConfigDuration>,
    /// Overrides of the global `weighting:` keys for this cluster.
    pub weighting: Option<weighting::WeightingConfig>,
    /// The cluster's endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// One `clusters[].endpoints[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// IPv4 or IPv6 address (EDS endpoints are addresses, not host names).
    pub address: String,
    /// TCP port, 1..65535.
    pub port: u32,
    /// Static `load_balancing_weight`, 1..2^32-1. Unset: the mean of the cluster's set weights,
    /// or 100 when none is set, so unset endpoints get an equal share.
    pub weight: Option<u64>,
    /// Pod name: the key that joins this endpoint with its metrics.
    pub pod: Option<String>,
    /// Locality region.
    pub region: Option<String>,
    /// Locality zone.
    pub zone: Option<String>,
    /// Locality sub-zone.
    pub sub_zone: Option<String>,
    /// Health status sent to Envoy: `healthy` (default), `draining` or `unhealthy`.
    pub health: Option<String>,
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

/// A configuration that passed validation, in the types the rest of the server uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig {
    /// The parsed file, as written.
    pub raw: Config,
    /// Parsed `xds.listen`.
    pub xds_listen: SocketAddr,
    /// Parsed `admin.listen`.
    pub admin_listen: SocketAddr,
    /// Endpoints per cluster name, in file order.
    pub clusters: BTreeMap<String, Vec<Endpoint>>,
    /// Tick, metrics sources and weighting settings.
    pub adaptive: adaptive::AdaptiveConfig,
    /// TLS settings of the xDS port, if any.
    pub xds_tls: Option<tls::TlsSettings>,
    /// The Kubernetes source, when `kubernetes.enabled`.
    pub kubernetes: Option<kubernetes::KubernetesSettings>,
}

/// One thing wrong with a configuration, at a field path such as `clusters[2].endpoints[0].port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a path of keys and indexes (empty for the document itself).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read.
    pub file: PathBuf,
    /// All problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(formatter)?;
            }
            if problem.field.is_empty() {
                write!(formatter, "{file}: {}", problem.message)?;
            } else {
                write!(formatter, "{file}: {}: {}", problem.field, problem.message)?;
            }
        }
        Ok(())
    }
}

/// Reads, parses and validates the configuration file at `path` (what `check` does; `serve`
/// starts from [`reload::ConfigWatch::open`], which also keeps the digest).
pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
    parse_file(path, &read(path)?.text)
}

/// The text of the configuration file, and the digest of its bytes that tells a change.
#[derive(Clone, Debug)]
pub struct FileText {
    /// The file's content.
    pub text: String,
    /// SHA-256 of the content.
    pub digest: [u8; 32],
}

/// Reads the configuration file: the one place it is read, at start and on every reload.
pub fn read(path: &Path) -> Result<FileText, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            field: String::new(),
            message: format!("cannot read the file: {error}"),
        }],
    })?;
    let digest = sha2::Sha256::digest(text.as_bytes()).into();
    Ok(FileText { text, digest })
}

/// Parses and validates text read from `path`; the error names the file with every problem.
pub fn parse_file(path: &Path, text: &str) -> Result<ValidConfig, ConfigError> {
    parse(text).map_err(|problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    })
}

/// Parses and validates configuration text, returning every problem found.
pub fn parse(text: &str) -> Result<ValidConfig, Vec<Problem>> {
    let raw = parse_yaml(text)?;
    validate(raw)
}

fn parse_yaml(text: &str) -> Result<Config, Vec<Problem>> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    let deserializer = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let message = error.into_inner().to_string();
        // The YAML error may already start with the path; say it once.
        let message = message
            .strip_prefix(&format!("{field}: "))
            .map(str::to_string)
            .unwrap_or(message);
        vec![Problem { field, message }]
    })
}

/// Checks every rule and converts the file into [`ValidConfig`], or lists every violation.
pub fn validate(raw: Config) -> Result<ValidConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let xds_listen = parse_listen("xds.listen", &raw.xds.listen, &mut problems);
    let admin_listen = parse_listen("admin.listen", &raw.admin.listen, &mut problems);
    if let (Some(xds), Some(admin)) = (xds_listen, admin_listen) {
        if xds == admin && xds.port() != 0 {
            problems.push(problem(
                "admin.listen",
                format!("must differ from xds.listen, both are {xds}"),
            ));
        }
    }
    if raw.xds.max_resource_names == 0 {
        problems.push(problem(
            "xds.max_resource_names",
            "expected at least 1, got 0",
        ));
    }
    let mut clusters = BTreeMap::new();
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (index, cluster) in raw.clusters.iter().enumerate() {
        let field = format!("clusters[{index}]");
        if cluster.name.trim().is_empty() {
            problems.push(problem(format!("{field}.name"), "must not be empty"));
        } else if let Some(first) = first_index.get(cluster.name.as_str()) {
            problems.push(problem(
                format!("{field}.name"),
                format!(
                    "duplicate cluster name {:?} (first defined at clusters[{first}])",
                    cluster.name
                ),
            ));
        } else {
            first_index.insert(&cluster.name, index);
        }
        let endpoints = validate_endpoints(&field, cluster, &mut problems);
        clusters.insert(cluster.name.clone(), endpoints);
    }
    let xds_tls = raw
        .xds
        .tls
        .as_ref()
        .map(|tls| validate_tls(tls, &mut problems));
    let adaptive = adaptive::validate(
        raw.tick,
        &raw.metrics,
        &raw.weighting,
        &raw.clusters,
        &mut problems,
    );
    let kubernetes = kubernetes::validate(&raw.kubernetes, &mut problems);
    if kubernetes.is_some() {
        kubernetes::validate_discovered_templates(&adaptive, &mut problems);
    }
    match (xds_listen, admin_listen, problems.is_empty()) {
        (Some(xds_listen), Some(admin_listen), true) => Ok(ValidConfig {
            raw,
            xds_listen,
            admin_listen,
            clusters,
            adaptive,
            xds_tls,
            kubernetes,
        }),
        _ => Err(problems),
    }
}

fn validate_tls(tls: &XdsTlsConfig, problems: &mut Vec<Problem>) -> tls::TlsSettings {
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

pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
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

fn validate_endpoints(
    cluster_field: &str,
    cluster: &ClusterConfig,
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
    let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
    for (index, endpoint) in cluster.endpoints.iter().enumerate() {
        let field = format!("{cluster_field}.endpoints[{index}]");
        if let Some(valid) = validate_endpoint(&field, endpoint, problems) {
            let key = (valid.address, valid.port);
            if let Some(first) = seen.get(&key) {
                problems.push(problem(
                    field,
                    format!(
                        "duplicate endpoint {}:{} (first at {cluster_field}.endpoints[{first}])",
                        valid.address, valid.port
                    ),
                ));
            } else {
                seen.insert(key, index);
                endpoints.push(valid);
            }
        }
    }
    check_locality_totals(cluster_field, &endpoints, problems);
    endpoints
}

fn validate_endpoint(
    field: &str,
    endpoint: &EndpointConfig,
    problems: &mut Vec<Problem>,
) -> Option<Endpoint> {
    let before = problems.len();
    let address = endpoint.address.trim().parse::<IpAddr>().ok();
    if address.is_none() {
        problems.push(problem(
            format!("{field}.address"),
            format!(
                "expected an IPv4 or IPv6 address, got {:?}",
                endpoint.address
            ),
        ));
    }
    let port = u16::try_from(endpoint.port).ok().filter(|port| *port != 0);
    if port.is_none() {
        problems.push(problem(
            format!("{field}.port"),
            format!("expected 1..65535, got {}", endpoint.port),
        ));
    }
    let weight = match endpoint.weight {
        None => None,
        Some(weight) => match u32::try_from(weight) {
            Ok(weight) if weight >= 1 => Some(weight),
            _ => {
                problems.push(problem(
                    format!("{field}.weight"),
                    format!("expected 1..{}, got {weight}", u32::MAX),
                ));
                None
            }
        },
    };
    let health = match endpoint.health.as_deref() {
        None => Some(HealthStatus::Healthy),
        Some(text) => {
            let parsed = HealthStatus::parse(text);
            if parsed.is_none() {
                problems.push(problem(
                    format!("{field}.health"),
                    format!("expected healthy, draining or unhealthy, got {text:?}"),
                ));
            }
            parsed
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Endpoint {
        address: address?,
        port: port?,
        configured_weight: weight,
        pod: endpoint.pod.clone(),
        locality: Locality {
            region: endpoint.region.clone().unwrap_or_default(),
            zone: endpoint.zone.clone().unwrap_or_default(),
            sub_zone: endpoint.sub_zone.clone().unwrap_or_default(),
        },
        health: health?,
    })
}

fn check_locality_totals(cluster_field: &str, endpoints: &[Endpoint], problems: &mut Vec<Problem>) {
    let weights = crate::weighting::static_weights(endpoints);
    let mut totals: BTreeMap<&Locality, u64> = BTreeMap::new();
    for (endpoint, weight) in endpoints.iter().zip(&weights) {
        *totals.entry(&endpoint.locality).or_default() += u64::from(weight.weight);
    }
    for (locality, total) in totals {
        if total > u64::from(u32::MAX) {
            problems.push(problem(
                format!("{cluster_field}.endpoints"),
                format!(
                    "weights in locality {locality} add up to {total}; Envoy needs the sum below 2^32 ({})",
                    u64::from(u32::MAX) + 1
                ),
            ));
        }
    }
}

/// Every problem of `text` as `field: message` lines (empty when valid), for tests.
#[cfg(test)]
pub(crate) fn problem_lines(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|problem| format!("{}: {}", problem.field, problem.message))
            .collect(),
    }
}

/// Asserts that `found` has one line per `expected` prefix, in order (for tests).
#[cfg(test)]
pub(crate) fn assert_problems_start_with(found: &[String], expected: &[&str]) {
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(
            found.starts_with(expected),
            "{found} should start with {expected}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use problem_lines as problems;

    #[test]
    fn accepts_the_documented_shape() {
        let config = parse(
            r#"
xds:   { listen: "127.0.0.1:18000" }
admin: { listen: "127.0.0.1:18080" }
clusters:
  - name: checkout
    endpoints:
      - { address: 127.0.0.1, port: 9001, weight: 300, pod: checkout-a, zone: z1 }
      - { address: 127.0.0.1, port: 9002 }
"#,
        )
        .expect("valid");
        let endpoints = &config.clusters["checkout"];
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].configured_weight, Some(300));
        assert_eq!(endpoints[0].pod.as_deref(), Some("checkout-a"));
        assert_eq!(endpoints[0].locality.zone, "z1");
        assert_eq!(endpoints[1].configured_weight, None);
        assert_eq!(config.xds_listen, "127.0.0.1:18000".parse().expect("addr"));
    }

    #[test]
    fn empty_file_is_a_valid_empty_config() {
        let config = parse("").expect("valid");
        assert!(config.clusters.is_empty());
        assert_eq!(config.admin_listen.port(), 18080);
    }

    #[test]
    fn unknown_keys_are_named() {
        let found = problems("clusters:\n  - name: a\n    endpoints:\n      - { address: 10.0.0.1, port: 80, wieght: 3 }\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("clusters[0].endpoints[0]"),
            "{found:?}"
        );
        assert!(found[0].contains("wieght"), "{found:?}");
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let found = problems("clusters: [ { name: a, endpoints: [ }");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let found = problems(
            r#"
xds: { listen: "nowhere" }
clusters:
  - name: a
    endpoints:
      - { address: 10.0.0.1, port: 0 }
      - { address: "not-an-ip", port: 80 }
      - { address: 10.0.0.2, port: 80, weight: 0 }
      - { address: 10.0.0.3, port: 70000 }
      - { address: 10.0.0.4, port: 80, health: sleepy }
  - name: a
    endpoints:
      - { address: 10.0.0.1, port: 80 }
      - { address: 10.0.0.1, port: 80 }
  - name: ""
"#,
        );
        let expected = [
            "xds.listen: expected IP:PORT",
            "clusters[0].endpoints[0].port: expected 1..65535, got 0",
            "clusters[0].endpoints[1].address: expected an IPv4 or IPv6 address",
            "clusters[0].endpoints[2].weight: expected 1..4294967295, got 0",
            "clusters[0].endpoints[3].port: expected 1..65535, got 70000",
            "clusters[0].endpoints[4].health: expected healthy, draining or unhealthy",
            "clusters[1].name: duplicate cluster name \"a\" (first defined at clusters[0])",
            "clusters[1].endpoints[1]: duplicate endpoint 10.0.0.1:80",
            "clusters[2].name: must not be empty",
        ];
        assert_problems_start_with(&found, &expected);
    }

    #[test]
    fn locality_total_must_stay_below_two_to_the_32() {
        let found = problems(
            r#"
clusters:
  - name: big
    endpoints:
      - { address: 10.0.0.1, port: 80, weight: 4294967295, zone: a }
      - { address: 10.0.0.2, port: 80, weight: 1, zone: a }
      - { address: 10.0.0.3, port: 80, weight: 4294967295, zone: b }
"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "clusters[0].endpoints: weights in locality zone=a add up to 4294967296"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn listeners_must_differ() {
        let found =
            problems("xds: { listen: \"127.0.0.1:1\" }\nadmin: { listen: \"127.0.0.1:1\" }\n");
        assert_eq!(
            found,
            vec!["admin.listen: must differ from xds.listen, both are 127.0.0.1:1"]
        );
    }

    #[test]
    fn error_display_names_the_file() {
        let error = ConfigError {
            file: PathBuf::from("config.yaml"),
            problems: vec![problem(
                "clusters[2].endpoints[0].port",
                "expected 1..65535, got 0",
            )],
        };
        assert_eq!(
            error.to_string(),
            "config.yaml: clusters[2].endpoints[0].port: expected 1..65535, got 0"
        );
    }
}
