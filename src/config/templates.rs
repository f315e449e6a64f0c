//! PromQL templates per cluster: a cluster's labels fill the `${namespace}`, `${container}`,
//! `${service}` and `${cluster}` placeholders of each `metrics.prometheus` query.

use std::collections::BTreeMap;

use super::{clusters::ClusterConfig, metrics::PrometheusConfig, problem, Problem};

/// The PromQL of one cluster, placeholders filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterQueries {
    /// CPU cores per series.
    pub cpu: String,
    /// Requests per second per series.
    pub rps: Option<String>,
    /// CPU limit per series.
    pub cpu_limit: Option<String>,
    /// Latency per series.
    pub latency: Option<String>,
    /// Errors per second per series.
    pub errors: Option<String>,
    /// Requests in flight per series.
    pub in_flight: Option<String>,
}

/// The labels a cluster of the file offers to the templates (`cluster`, and those it sets).
pub(super) fn cluster_labels(cluster: &ClusterConfig) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("cluster".to_string(), cluster.name.clone());
    for (key, value) in [
        ("namespace", &cluster.namespace),
        ("container", &cluster.container),
        ("service", &cluster.service),
    ] {
        if let Some(value) = value {
            labels.insert(key.to_string(), value.clone());
        }
    }
    labels
}

/// Every set query template rendered for one cluster; a placeholder without a value is a problem
/// at `field.LABEL` (the cluster needs the label) or at the template (no such placeholder).
pub(super) fn render_queries(
    config: &PrometheusConfig,
    labels: &BTreeMap<String, String>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> ClusterQueries {
    let mut render =
        |key: &str, template: &str| render_template(template, labels, key, field, problems);
    ClusterQueries {
        cpu: render("cpu_query", &config.cpu_query),
        rps: config
            .rps_query
            .as_deref()
            .map(|query| render("rps_query", query)),
        cpu_limit: config
            .cpu_limit_query
            .as_deref()
            .map(|query| render("cpu_limit_query", query)),
        latency: config
            .latency_query
            .as_deref()
            .map(|query| render("latency_query", query)),
        errors: config
            .error_query
            .as_deref()
            .map(|query| render("error_query", query)),
        in_flight: config
            .in_flight_query
            .as_deref()
            .map(|query| render("in_flight_query", query)),
    }
}

/// Replaces `${name}` placeholders with the cluster's labels.
fn render_template(
    template: &str,
    labels: &BTreeMap<String, String>,
    key: &str,
    cluster_field: &str,
    problems: &mut Vec<Problem>,
) -> String {
    let mut output = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            problems.push(problem(
                format!("metrics.prometheus.{key}"),
                "unclosed ${ placeholder",
            ));
            return output;
        };
        let name = &after[..end];
        match labels.get(name) {
            Some(value) => output.push_str(value),
            None if ["namespace", "container", "service"].contains(&name) => problems.push(problem(
                format!("{cluster_field}.{name}"),
                format!("required by metrics.prometheus.{key} (it uses ${{{name}}})"),
            )),
            None => problems.push(problem(
                format!("metrics.prometheus.{key}"),
                format!("unknown placeholder ${{{name}}}; use ${{namespace}}, ${{container}}, ${{service}} or ${{cluster}}"),
            )),
        }
        rest = &after[end + 1..];
    }
    output.push_str(rest);
    output
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::warnings::has_error_signal;

    use crate::config::{assert_problems_start_with, problem_lines as problems};

    #[test]
    fn default_query_is_filled_from_the_cluster() {
        let config = parse(
            "metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nclusters: [{ name: a, namespace: shop, container: web }]\n",
        )
        .expect("valid");
        let queries = config
            .adaptive
            .settings("a")
            .queries
            .clone()
            .expect("queries");
        assert_eq!(
            queries.cpu,
            "sum(rate(container_cpu_usage_seconds_total{namespace=\"shop\",container=\"web\"}[1m])) by (pod)"
        );
        let found = problems("metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nclusters: [{ name: a, namespace: shop }]\n");
        assert_eq!(found, vec!["clusters[0].container: required by metrics.prometheus.cpu_query (it uses ${container})"]);
    }

    #[test]
    fn error_and_in_flight_queries_are_rendered_like_the_others() {
        let config = parse(
            r#"
metrics:
  prometheus:
    url: http://127.0.0.1:8428
    rps_query: 'sum(rate(http_requests_total{namespace="${namespace}"}[1m])) by (pod)'
    error_query: 'sum(rate(http_requests_total{namespace="${namespace}",code=~"5.."}[1m])) by (pod)'
    in_flight_query: 'sum(http_in_flight{service="${service}"}) by (pod)'
clusters: [{ name: a, namespace: shop, container: web, service: cart }]
"#,
        )
        .expect("valid");
        let queries = config
            .adaptive
            .settings("a")
            .queries
            .clone()
            .expect("queries");
        assert_eq!(
            queries.errors.as_deref(),
            Some("sum(rate(http_requests_total{namespace=\"shop\",code=~\"5..\"}[1m])) by (pod)")
        );
        assert_eq!(
            queries.in_flight.as_deref(),
            Some("sum(http_in_flight{service=\"cart\"}) by (pod)")
        );
        assert!(has_error_signal(&config.adaptive, "a"));
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());

        let found = problems(
            r#"
metrics:
  prometheus:
    url: http://127.0.0.1:8428
    error_query: 'sum(rate(errors_total{namespace="${namespace}"}[1m])) by (pod)'
    in_flight_query: ' '
clusters: [{ name: a, container: web }]
"#,
        );
        assert_problems_start_with(
            &found,
            &[
                "metrics.prometheus.in_flight_query: must not be empty when set",
                "metrics.prometheus.error_query: needs metrics.prometheus.rps_query",
                "clusters[0].namespace: required by metrics.prometheus.cpu_query (it uses ${namespace})",
                "clusters[0].namespace: required by metrics.prometheus.error_query (it uses ${namespace})",
            ],
        );
    }
}
