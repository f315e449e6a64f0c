//! Settings that are valid but probably not what the user wants: `check` prints them and
//! `serve` logs them, as `FIELD: reason`.

use super::{adaptive::AdaptiveConfig, problem, promql, Problem, ValidConfig};
use crate::weighting::params::Algorithm;

/// What `check` and `serve` warn about in a valid configuration.
const NO_ERROR_SIGNAL: &str = "algorithm capacity without an error signal: a pod that fails fast (e.g. 503 in 0.2 ms) reads as the cheapest pod and is only capped at an equal share, not held at a probe; configure one: metrics.load_reports, metrics.prometheus.error_query, or metrics.remote_write.error_metric or error_labels";

impl ValidConfig {
    /// Settings that are valid but probably not what the user wants, as `FIELD: reason`.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings: Vec<Problem> = self
            .raw
            .clusters
            .iter()
            .enumerate()
            .filter(|(_, cluster)| {
                self.adaptive.settings(&cluster.name).params.algorithm == Algorithm::Capacity
                    && !has_error_signal(&self.adaptive, &cluster.name)
            })
            .map(|(index, _)| problem(format!("clusters[{index}]"), NO_ERROR_SIGNAL))
            .collect();
        // Discovered clusters get the defaults.
        if self.kubernetes.is_some()
            && self.adaptive.defaults.params.algorithm == Algorithm::Capacity
            && !discovered_have_error_signal(&self.adaptive)
        {
            warnings.push(problem("kubernetes", NO_ERROR_SIGNAL));
        }
        // A template that cannot be batched costs one query per cluster per tick.
        if let (Some(pull), Some(templates)) =
            (&self.adaptive.prometheus, &self.adaptive.query_templates)
        {
            if pull.batch {
                for (key, template) in templates.templates() {
                    if let Err(reason) = promql::analyze(template, &pull.join_label) {
                        warnings.push(problem(
                            format!("metrics.prometheus.{key}"),
                            format!("not batched, so it runs once per cluster every tick: {reason} (only LABEL=\"${{...}}\" matchers, aggregations with by (...) and per-series functions can be batched safely)"),
                        ));
                    }
                }
            }
        }
        warnings
    }
}

/// Whether some configured source gives `cluster` errors per second (so that a pod failing fast
/// can be told from a cheap one). A source of errors added later belongs in
/// [`has_shared_error_signal`] (every cluster) or here (per cluster).
pub fn has_error_signal(config: &AdaptiveConfig, cluster: &str) -> bool {
    match config.clusters.get(cluster) {
        Some(settings) => {
            settings
                .queries
                .as_ref()
                .is_some_and(|queries| queries.errors.is_some())
                || has_shared_error_signal(config)
        }
        None => discovered_have_error_signal(config),
    }
}

/// Whether clusters discovered at run time (which get the defaults and the query templates)
/// will have errors per second.
pub fn discovered_have_error_signal(config: &AdaptiveConfig) -> bool {
    config
        .query_templates
        .as_ref()
        .is_some_and(|templates| templates.error_query.is_some())
        || has_shared_error_signal(config)
}

/// Whether a source that serves every cluster gives errors per second: Envoy's load reports
/// always count errors, remote-write when it is told which series are errors.
fn has_shared_error_signal(config: &AdaptiveConfig) -> bool {
    config.load_reports.is_some()
        || config
            .remote_write
            .as_ref()
            .is_some_and(|settings| settings.errors.is_some())
}

#[cfg(test)]
mod tests {
    use super::has_error_signal;
    use crate::config::assert_problems_start_with;
    use crate::config::parse;

    #[test]
    fn capacity_without_an_error_signal_is_warned_about() {
        let config = parse(
            r#"
metrics: { prometheus: { url: "http://127.0.0.1:8428", rps_query: "r" } }
weighting: { algorithm: capacity }
clusters:
  - { name: a, namespace: shop, container: web }
  - { name: b, weighting: { algorithm: static } }
  - { name: c, namespace: shop, container: web, weighting: { algorithm: distance } }
  - { name: d, namespace: shop, container: web }
"#,
        )
        .expect("valid");
        let warnings: Vec<String> = config
            .warnings()
            .into_iter()
            .map(|warning| format!("{}: {}", warning.field, warning.message))
            .collect();
        assert_problems_start_with(
            &warnings,
            &[
                "clusters[0]: algorithm capacity without an error signal",
                "clusters[3]: algorithm capacity without an error signal",
            ],
        );
        assert!(
            warnings[0].contains("metrics.prometheus.error_query"),
            "{warnings:?}"
        );
        assert!(!has_error_signal(&config.adaptive, "a"));
        // Load reports count errors.
        let reported = parse(
            "metrics: { load_reports: { enabled: true } }\nclusters: [{ name: a }]\nkubernetes: { enabled: true, services: [{ namespace: shop, name: cart }] }\n",
        )
        .expect("valid");
        assert!(reported.warnings().is_empty(), "{:?}", reported.warnings());
        // Discovered clusters get the defaults: warned about once, as `kubernetes`.
        let discovered = parse(
            "metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nkubernetes: { enabled: true, services: [{ namespace: shop, name: cart }] }\n",
        )
        .expect("valid");
        let fields: Vec<String> = discovered
            .warnings()
            .into_iter()
            .map(|warning| warning.field)
            .collect();
        assert_eq!(fields, ["kubernetes"]);
        // A static-only file warns about nothing.
        let quiet = parse(
            "clusters: [{ name: a }]
",
        )
        .expect("valid");
        assert!(quiet.warnings().is_empty());
    }

    #[test]
    fn templates_that_cannot_be_batched_are_warned_about_unless_batching_is_off() {
        let text = |batch: &str| {
            format!(
                r#"
metrics:
  prometheus:
    url: "http://127.0.0.1:8428"
    rps_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}"}}[1m]))'
    error_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}",code=~"5.."}}[1m])) by (pod)'
    latency_query: 'label_replace(latency{{namespace="${{namespace}}"}}, "pod", "$1", "instance", "(.*)")'
    {batch}
clusters:
  - {{ name: a, namespace: shop, container: web }}
"#
            )
        };
        let config = parse(&text("")).expect("valid");
        assert!(config
            .adaptive
            .prometheus
            .as_ref()
            .is_some_and(|pull| pull.batch));
        let warnings: Vec<String> = config
            .warnings()
            .into_iter()
            .map(|warning| format!("{}: {}", warning.field, warning.message))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("metrics.prometheus.rps_query: not batched, so it runs once per cluster every tick: an aggregation (sum) without by (...)"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("metrics.prometheus.latency_query: not batched")
                && warnings[1].contains("label_replace() can rewrite the labels"),
            "{warnings:?}"
        );
        // Switched off, nothing is batched and nothing is warned about.
        let off = parse(&text("batch: false")).expect("valid");
        assert!(off
            .adaptive
            .prometheus
            .as_ref()
            .is_some_and(|pull| !pull.batch));
        assert!(off.warnings().is_empty(), "{:?}", off.warnings());
    }
}
