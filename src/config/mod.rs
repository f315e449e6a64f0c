//! The YAML configuration: the document (each section's shape and validation in its own
//! module), reading the file, and validation that names every bad field.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::Digest;

use crate::model::Endpoint;

pub mod adaptive;
pub mod clusters;
pub mod duration;
pub mod kubernetes;
pub mod metrics;
pub mod promql;
pub mod reload;
pub mod templates;
pub mod tls;
pub mod warnings;
pub mod weighting;
pub mod xds;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gRPC listener for xDS, reflection, health and `Inspect`.
    #[serde(default)]
    pub xds: xds::XdsConfig,
    /// The HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin: xds::AdminConfig,
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
    pub clusters: Vec<clusters::ClusterConfig>,
    /// Endpoints discovered from Kubernetes EndpointSlices.
    #[serde(default)]
    pub kubernetes: kubernetes::KubernetesConfig,
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
    let (xds_listen, admin_listen) = xds::validate_listeners(&raw.xds, &raw.admin, &mut problems);
    let clusters = clusters::validate(&raw.clusters, &mut problems);
    let xds_tls = raw
        .xds
        .tls
        .as_ref()
        .map(|tls| xds::validate_tls(tls, &mut problems));
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

pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
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
      - { address: 127.0.0.1, port: 9001, weight: 300, pod: checkout-a, node: node-1, zone: z1 }
      - { address: 127.0.0.1, port: 9002, node: "" }
"#,
        )
        .expect("valid");
        let endpoints = &config.clusters["checkout"];
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].configured_weight, Some(300));
        assert_eq!(endpoints[0].pod.as_deref(), Some("checkout-a"));
        assert_eq!(endpoints[0].locality.zone, "z1");
        assert_eq!(endpoints[0].node.as_deref(), Some("node-1"));
        assert_eq!(endpoints[1].node, None, "an empty node is no node");
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
