//! The `kubernetes:` section: which Services become EDS clusters and how those are named, and
//! the settings a discovered cluster gets (the defaults, with the query templates rendered for
//! its labels).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    adaptive::{AdaptiveConfig, ClusterSettings},
    problem,
    templates::render_queries,
    Problem,
};
use crate::weighting::params::Algorithm;

/// `kubernetes:` keys, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Turns the EndpointSlice source on (default off).
    #[serde(default)]
    pub enabled: bool,
    /// Path of a kubeconfig file; unset: in-cluster service account, else `KUBECONFIG`/`~/.kube`.
    pub kubeconfig: Option<String>,
    /// Services selected by namespace and name.
    #[serde(default)]
    pub services: Vec<ServiceReference>,
    /// Services selected by a label on the Service object.
    pub selector: Option<LabelSelector>,
    /// Which cluster names each service port gets (default `istio`).
    #[serde(default)]
    pub naming: Naming,
    /// The cluster DNS domain in Istio names (default `cluster.local`).
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
}

/// One `kubernetes.services[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct ServiceReference {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

/// `kubernetes.selector`: a Service is selected when its label `label` equals `value`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    /// Label key, e.g. `adaptive-eds.io/enabled`.
    pub label: String,
    /// Required value (default `"true"`).
    #[serde(default = "default_selector_value")]
    pub value: String,
}

/// How a discovered service port is named as an EDS resource.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// Istio's `outbound|PORT||NAME.NAMESPACE.svc.DOMAIN`, for sidecars and gateways.
    #[default]
    Istio,
    /// `NAME.NAMESPACE:PORT`, for a standalone Envoy whose bootstrap names the cluster.
    Plain,
    /// Both names, each its own EDS resource with the same endpoints.
    Both,
}

fn default_cluster_domain() -> String {
    "cluster.local".into()
}

fn default_selector_value() -> String {
    "true".into()
}

/// The validated `kubernetes:` section (present only when `enabled`).
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesSettings {
    /// Kubeconfig path, if set.
    pub kubeconfig: Option<String>,
    /// Services selected by name, sorted.
    pub services: Vec<ServiceReference>,
    /// Label selection, if set.
    pub selector: Option<LabelSelector>,
    /// Cluster naming.
    pub naming: Naming,
    /// DNS domain in Istio names.
    pub cluster_domain: String,
}

/// Checks the section; `None` when it is disabled.
pub fn validate(
    config: &KubernetesConfig,
    problems: &mut Vec<Problem>,
) -> Option<KubernetesSettings> {
    if !config.enabled {
        return None;
    }
    if config.services.is_empty() && config.selector.is_none() {
        problems.push(problem(
            "kubernetes",
            "select services: set kubernetes.services, kubernetes.selector, or both",
        ));
    }
    for (index, service) in config.services.iter().enumerate() {
        for (key, value) in [("namespace", &service.namespace), ("name", &service.name)] {
            if !is_dns_label(value) {
                problems.push(problem(
                    format!("kubernetes.services[{index}].{key}"),
                    format!("expected a Kubernetes name (lowercase letters, digits, '-'), got {value:?}"),
                ));
            }
        }
    }
    if let Some(selector) = &config.selector {
        if selector.label.trim().is_empty() {
            problems.push(problem("kubernetes.selector.label", "must not be empty"));
        }
    }
    let domain = config.cluster_domain.trim().trim_matches('.');
    if domain.is_empty() || domain.split('.').any(|part| !is_dns_label(part)) {
        problems.push(problem(
            "kubernetes.cluster_domain",
            format!(
                "expected a DNS domain such as cluster.local, got {:?}",
                config.cluster_domain
            ),
        ));
    }
    if let Some(path) = &config.kubeconfig {
        if !std::path::Path::new(path).is_file() {
            problems.push(problem(
                "kubernetes.kubeconfig",
                format!("no such file: {path}; remove the key to use the in-cluster account"),
            ));
        }
    }
    let mut services = config.services.clone();
    services.sort();
    services.dedup();
    Some(KubernetesSettings {
        kubeconfig: config.kubeconfig.clone(),
        services,
        selector: config.selector.clone(),
        naming: config.naming,
        cluster_domain: domain.to_string(),
    })
}

/// A DNS-1123 label: 1..63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Discovered cluster name -> its labels for query templates (`cluster`, `namespace`,
/// `service`, `container`).
pub type DiscoveredClusters = BTreeMap<String, BTreeMap<String, String>>;

/// The labels a discovered cluster offers to query templates: every placeholder has a value.
pub fn discovered_labels(
    cluster: &str,
    namespace: &str,
    service: &str,
    container: &str,
) -> BTreeMap<String, String> {
    [
        ("cluster", cluster),
        ("namespace", namespace),
        ("service", service),
        ("container", container),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

/// Checks that the query templates render for discovered clusters (which have every label);
/// catches an unknown placeholder even when the file names no cluster.
pub fn validate_discovered_templates(config: &AdaptiveConfig, problems: &mut Vec<Problem>) {
    if config.defaults.params.algorithm == Algorithm::Static {
        return;
    }
    if let Some(templates) = &config.query_templates {
        let labels = discovered_labels("c", "n", "s", "c");
        let mut found = Vec::new();
        render_queries(templates, &labels, "kubernetes", &mut found);
        for problem in found {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
}

impl AdaptiveConfig {
    /// This config plus settings for clusters discovered at run time (Kubernetes), given each
    /// one's labels (`discovered_labels`). A cluster the file names keeps its own settings; the
    /// others get the defaults, with the query templates rendered for their labels.
    pub fn with_discovered(&self, discovered: &DiscoveredClusters) -> Self {
        let mut merged = self.clone();
        for (name, labels) in discovered {
            if merged.clusters.contains_key(name) {
                continue;
            }
            let queries = match (&self.query_templates, self.defaults.params.algorithm) {
                (Some(templates), algorithm) if algorithm != Algorithm::Static => {
                    let mut problems = Vec::new();
                    let queries = render_queries(templates, labels, name, &mut problems);
                    if !problems.is_empty() {
                        tracing::error!(cluster = %name, ?problems, "cannot render the metrics queries for a discovered cluster; it keeps equal weights");
                        None
                    } else {
                        Some(queries)
                    }
                }
                _ => None,
            };
            merged.clusters.insert(
                name.clone(),
                ClusterSettings {
                    params: self.defaults.params.clone(),
                    tick: self.defaults.tick,
                    queries,
                    labels: labels.clone(),
                },
            );
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    use crate::config::problem_lines as problems;

    #[test]
    fn accepts_the_documented_shape_with_defaults() {
        let config = parse(
            "kubernetes:\n  enabled: true\n  services: [{ namespace: shop, name: checkout }]\n  selector: { label: adaptive-eds.io/enabled }\n",
        )
        .expect("valid");
        let settings = config.kubernetes.expect("enabled");
        assert_eq!(settings.cluster_domain, "cluster.local");
        assert_eq!(settings.naming, super::Naming::Istio);
        assert_eq!(settings.selector.expect("selector").value, "true");
        assert_eq!(settings.services[0].name, "checkout");
    }

    #[test]
    fn disabled_section_is_not_checked() {
        let config = parse("kubernetes: { enabled: false }\n").expect("valid");
        assert!(config.kubernetes.is_none());
    }

    #[test]
    fn every_problem_is_named() {
        let found = problems(
            "kubernetes:\n  enabled: true\n  kubeconfig: /nonexistent/kubeconfig\n  services: [{ namespace: Shop, name: \"\" }]\n  cluster_domain: \"bad domain\"\n",
        );
        assert_eq!(
            found,
            vec![
                "kubernetes.services[0].namespace: expected a Kubernetes name (lowercase letters, digits, '-'), got \"Shop\"",
                "kubernetes.services[0].name: expected a Kubernetes name (lowercase letters, digits, '-'), got \"\"",
                "kubernetes.cluster_domain: expected a DNS domain such as cluster.local, got \"bad domain\"",
                "kubernetes.kubeconfig: no such file: /nonexistent/kubeconfig; remove the key to use the in-cluster account",
            ]
        );
        assert_eq!(
            problems("kubernetes: { enabled: true, naming: fancy }\n").len(),
            1
        );
        assert_eq!(
            problems("kubernetes: { enabled: true }\n"),
            vec!["kubernetes: select services: set kubernetes.services, kubernetes.selector, or both"]
        );
    }

    #[test]
    fn discovered_clusters_get_rendered_queries_and_bad_templates_are_caught() {
        let config = parse(
            "metrics:\n  prometheus: { url: \"http://127.0.0.1:8428\" }\nkubernetes: { enabled: true, services: [{ namespace: shop, name: checkout }] }\n",
        )
        .expect("valid");
        let labels = super::discovered_labels(
            "outbound|8080||checkout.shop.svc.cluster.local",
            "shop",
            "checkout",
            "web",
        );
        let discovered = [(
            "outbound|8080||checkout.shop.svc.cluster.local".to_string(),
            labels,
        )]
        .into();
        let merged = config.adaptive.with_discovered(&discovered);
        let settings = merged.settings("outbound|8080||checkout.shop.svc.cluster.local");
        let queries = settings.queries.as_ref().expect("rendered queries");
        assert!(
            queries.cpu.contains("namespace=\"shop\",container=\"web\""),
            "{}",
            queries.cpu
        );
        assert_eq!(settings.params, config.adaptive.defaults.params);

        let found = problems(
            "metrics:\n  prometheus: { url: \"http://127.0.0.1:8428\", cpu_query: \"up{job=\\\"${job}\\\"}\" }\nkubernetes: { enabled: true, services: [{ namespace: shop, name: checkout }] }\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("metrics.prometheus.cpu_query: unknown placeholder ${job}"),
            "{found:?}"
        );
    }
}
