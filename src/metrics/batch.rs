//! The PromQL queries of one tick: one per template for every cluster using it (in chunks under a
//! URL limit), one per cluster for what cannot be batched, and each answer split per cluster.

use std::collections::{BTreeMap, BTreeSet};

use super::prometheus::Series;
use crate::config::promql::{self, BatchTemplate, SEPARATOR_ENCODED_LEN};
use crate::config::{
    adaptive::ClusterSettings, metrics::PrometheusConfig, templates::ClusterQueries,
};
use crate::samples::Signal;

/// Longest query URL we send (scheme to the end of the query string), 8 KiB: reverse proxies and
/// gateways in front of a metrics store commonly refuse longer request lines (nginx's default
/// `large_client_header_buffers` is 8 KiB, Apache's `LimitRequestLine` 8190 bytes), while
/// Prometheus and VictoriaMetrics accept far more. A larger group of clusters is split into
/// chunks, one query each: about 8,000 / (value length + 3) clusters per chunk when each cluster
/// brings one new value (500 namespaces like `ns-123` fit in one query).
pub const MAX_QUERY_URL_BYTES: usize = 8 * 1024;

/// Every signal, its template key and its query in [`ClusterQueries`].
pub const SIGNALS: [(Signal, &str); 6] = [
    (Signal::Cpu, "cpu_query"),
    (Signal::Rps, "rps_query"),
    (Signal::CpuLimit, "cpu_limit_query"),
    (Signal::Latency, "latency_query"),
    (Signal::Errors, "error_query"),
    (Signal::InFlight, "in_flight_query"),
];

/// The rendered query of `signal` for one cluster, if it has one.
pub fn cluster_query(queries: &ClusterQueries, signal: Signal) -> Option<&str> {
    match signal {
        Signal::Cpu => Some(&queries.cpu),
        Signal::Rps => queries.rps.as_deref(),
        Signal::CpuLimit => queries.cpu_limit.as_deref(),
        Signal::Latency => queries.latency.as_deref(),
        Signal::Errors => queries.errors.as_deref(),
        Signal::InFlight => queries.in_flight.as_deref(),
    }
}

/// The query templates of one config, each read once: how to batch it, or why not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TemplatePlans {
    plans: Vec<(Signal, Result<BatchTemplate, String>)>,
}

impl TemplatePlans {
    /// Reads every template of `templates` (`metrics.prometheus` as written).
    pub fn new(templates: Option<&PrometheusConfig>, join_label: &str) -> Self {
        let Some(templates) = templates else {
            return Self::default();
        };
        let written = templates.templates();
        let plans = SIGNALS
            .iter()
            .filter_map(|(signal, key)| {
                let (_, template) = written.iter().find(|(written, _)| written == key)?;
                Some((*signal, promql::analyze(template, join_label)))
            })
            .collect();
        Self { plans }
    }

    fn batchable(&self, signal: Signal) -> Option<&BatchTemplate> {
        self.plans
            .iter()
            .find(|(planned, _)| *planned == signal)
            .and_then(|(_, plan)| plan.as_ref().ok())
    }
}

/// Which clusters an answer belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum Answers<'a> {
    /// One cluster's own query: the whole answer is its.
    One(&'a str),
    /// A batched query: a series belongs to the clusters whose values of `labels` it carries (a
    /// missing label reads as `""`, as PromQL matches it).
    Split {
        /// The labels that tell clusters apart.
        labels: Vec<String>,
        /// The clusters by their values of `labels`.
        clusters: BTreeMap<Vec<String>, Vec<&'a str>>,
    },
}

/// One query of a tick and the clusters it answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Job<'a> {
    /// The signal it measures.
    pub signal: Signal,
    /// The PromQL sent.
    pub query: String,
    /// Who the answer is for.
    pub answers: Answers<'a>,
}

impl<'a> Job<'a> {
    /// Every cluster this query answers.
    pub fn clusters(&self) -> Vec<&'a str> {
        match &self.answers {
            Answers::One(cluster) => vec![cluster],
            Answers::Split { clusters, .. } => clusters.values().flatten().copied().collect(),
        }
    }

    /// The answer per cluster: every cluster of the job gets its series (maybe none, as its own
    /// query would have answered), series of no cluster are dropped.
    pub fn split(&self, series: Vec<Series>) -> Vec<(&'a str, Vec<Series>)> {
        match &self.answers {
            Answers::One(cluster) => vec![(cluster, series)],
            Answers::Split { labels, clusters } => {
                let mut parts: BTreeMap<&Vec<String>, Vec<Series>> =
                    clusters.keys().map(|values| (values, Vec::new())).collect();
                for one in series {
                    let values: Vec<String> = labels
                        .iter()
                        .map(|label| one.labels.get(label).cloned().unwrap_or_default())
                        .collect();
                    if let Some(part) = parts.get_mut(&values) {
                        part.push(one);
                    }
                }
                let mut split = Vec::with_capacity(parts.len());
                for (values, part) in parts {
                    let names = &clusters[values];
                    for name in &names[..names.len() - 1] {
                        split.push((*name, part.clone()));
                    }
                    split.push((names[names.len() - 1], part));
                }
                split
            }
        }
    }
}

/// The queries of one tick for the `due` clusters (name, settings). With `batch`, every batchable
/// template gives one query per chunk of the clusters using it (a chunk's whole URL, `prefix`
/// bytes before the query plus the form-encoded query, stays within `max_url_bytes`); everything
/// else is one query per cluster and signal, as without `batch`.
pub fn plan<'a>(
    due: &[(&'a str, &'a ClusterSettings)],
    plans: &TemplatePlans,
    batch: bool,
    prefix: usize,
    max_url_bytes: usize,
) -> Vec<Job<'a>> {
    let mut jobs = Vec::new();
    for (signal, _) in SIGNALS {
        let template = plans.batchable(signal).filter(|_| batch);
        let mut members: Vec<(Vec<&'a str>, &'a str, &'a str)> = Vec::new();
        for (name, settings) in due {
            let Some(query) = settings
                .queries
                .as_ref()
                .and_then(|queries| cluster_query(queries, signal))
            else {
                continue;
            };
            match template.and_then(|template| member_values(template, settings, query)) {
                Some(values) => members.push((values, name, query)),
                None => jobs.push(Job {
                    signal,
                    query: query.to_string(),
                    answers: Answers::One(name),
                }),
            }
        }
        let Some(template) = template else { continue };
        if let [(_, name, query)] = members.as_slice() {
            // Alone: its own query is the same work and the shorter URL.
            jobs.push(Job {
                signal,
                query: query.to_string(),
                answers: Answers::One(name),
            });
            continue;
        }
        members.sort();
        for chunk in chunks(template, &members, prefix, max_url_bytes) {
            let mut sets: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); template.keys().len()];
            let mut clusters: BTreeMap<Vec<String>, Vec<&'a str>> = BTreeMap::new();
            for (values, name, _) in &members[chunk] {
                for (set, value) in sets.iter_mut().zip(values) {
                    set.insert(value);
                }
                clusters
                    .entry(values.iter().map(|value| value.to_string()).collect())
                    .or_default()
                    .push(name);
            }
            jobs.push(Job {
                signal,
                query: template.render(&sets),
                answers: Answers::Split {
                    labels: template
                        .keys()
                        .iter()
                        .map(|key| key.label.clone())
                        .collect(),
                    clusters,
                },
            });
        }
    }
    jobs
}

/// A cluster's values of the template's keys, when its query is exactly the template filled
/// with them and each can go into a regex as is; else it keeps its own query.
fn member_values<'a>(
    template: &BatchTemplate,
    settings: &'a ClusterSettings,
    query: &str,
) -> Option<Vec<&'a str>> {
    let values = template
        .keys()
        .iter()
        .map(|key| settings.labels.get(&key.placeholder).map(String::as_str))
        .collect::<Option<Vec<&str>>>()?;
    (values.iter().all(|value| promql::batchable_value(value)) && template.fill(&values) == query)
        .then_some(values)
}

/// `members` (sorted, so clusters sharing values sit together) cut greedily into chunks whose
/// batched query URL fits in `max_url_bytes`; a cluster too long even alone gets a chunk of its own.
fn chunks(
    template: &BatchTemplate,
    members: &[(Vec<&str>, &str, &str)],
    prefix: usize,
    max_url_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let keys = template.keys().len();
    let empty: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); keys];
    let fixed = prefix + promql::form_encoded_len(&template.render(&empty));
    let matchers: Vec<usize> = (0..keys).map(|key| template.matcher_count(key)).collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut sets = empty.clone();
    let mut length = fixed;
    for (index, (values, _, _)) in members.iter().enumerate() {
        let cost = |sets: &[BTreeSet<&str>]| -> usize {
            (0..keys)
                .filter(|key| !sets[*key].contains(values[*key]))
                .map(|key| {
                    let separator = if sets[key].is_empty() {
                        0
                    } else {
                        SEPARATOR_ENCODED_LEN
                    };
                    matchers[key] * (BatchTemplate::encoded_value_len(values[key]) + separator)
                })
                .sum()
        };
        let mut added = cost(&sets);
        if index > start && length + added > max_url_bytes {
            chunks.push(start..index);
            start = index;
            sets = empty.clone();
            length = fixed;
            added = cost(&sets);
        }
        for (set, value) in sets.iter_mut().zip(values) {
            set.insert(value);
        }
        length += added;
    }
    if start < members.len() {
        chunks.push(start..members.len());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::metrics::DEFAULT_CPU_QUERY;
    use crate::samples::Sample;
    use std::collections::HashMap;

    fn settings(labels: &[(&str, &str)], template: &str) -> ClusterSettings {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let plan = promql::analyze(template, "pod").expect("batchable");
        let values: Vec<&str> = plan
            .keys()
            .iter()
            .map(|key| labels[&key.placeholder].as_str())
            .collect();
        ClusterSettings {
            params: Default::default(),
            tick: std::time::Duration::from_secs(10),
            queries: Some(ClusterQueries {
                cpu: plan.fill(&values),
                ..Default::default()
            }),
            labels,
        }
    }

    fn plans(cpu_query: &str) -> TemplatePlans {
        TemplatePlans {
            plans: vec![(Signal::Cpu, promql::analyze(cpu_query, "pod"))],
        }
    }

    fn series(labels: &[(&str, &str)], value: f64) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            sample: Sample {
                value,
                timestamp_ms: 1,
            },
        }
    }

    #[test]
    fn clusters_sharing_a_template_get_one_query_and_their_own_series() {
        let a = settings(
            &[("namespace", "shop"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let b = settings(
            &[("namespace", "a.b"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        // Same labels as `a` (e.g. one Service under two names): the same series.
        let twin = settings(
            &[("namespace", "shop"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let due = [("a", &a), ("b", &b), ("twin", &twin)];
        let jobs = plan(
            &due,
            &plans(DEFAULT_CPU_QUERY),
            true,
            40,
            MAX_QUERY_URL_BYTES,
        );
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(
            jobs[0].query,
            r#"sum(rate(container_cpu_usage_seconds_total{namespace=~"a\\.b|shop",container=~"web"}[1m])) by (pod, namespace, container)"#
        );
        let answer = vec![
            series(
                &[("pod", "p1"), ("namespace", "shop"), ("container", "web")],
                1.0,
            ),
            series(
                &[("pod", "p2"), ("namespace", "a.b"), ("container", "web")],
                2.0,
            ),
            // `a.b` must not take the series of a namespace `aXb` (the regex is escaped) nor
            // anything else the store sends.
            series(
                &[("pod", "p3"), ("namespace", "aXb"), ("container", "web")],
                3.0,
            ),
        ];
        let split: HashMap<&str, Vec<Series>> = jobs[0].split(answer).into_iter().collect();
        assert_eq!(split.len(), 3);
        assert_eq!(split["a"].len(), 1);
        assert_eq!(split["a"][0].labels["pod"], "p1");
        assert_eq!(split["twin"], split["a"]);
        assert_eq!(split["b"].len(), 1);
        assert_eq!(split["b"][0].labels["pod"], "p2");
    }

    #[test]
    fn a_cluster_with_nothing_in_the_answer_still_gets_its_empty_answer() {
        let a = settings(
            &[("namespace", "a"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let b = settings(
            &[("namespace", "b"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let due = [("a", &a), ("b", &b)];
        let jobs = plan(
            &due,
            &plans(DEFAULT_CPU_QUERY),
            true,
            40,
            MAX_QUERY_URL_BYTES,
        );
        let split = jobs[0].split(vec![series(
            &[("pod", "p"), ("namespace", "a"), ("container", "web")],
            1.0,
        )]);
        assert_eq!(split.len(), 2);
        assert!(split
            .iter()
            .any(|(name, part)| *name == "b" && part.is_empty()));
    }

    #[test]
    fn without_batch_or_when_not_batchable_every_cluster_has_its_own_query() {
        let template = r#"sum(x{namespace="${namespace}"})"#; // no by: not batchable
        let a = settings(
            &[("namespace", "a"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let b = settings(
            &[("namespace", "b"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let due = [("a", &a), ("b", &b)];
        let own = |jobs: &[Job]| {
            jobs.iter()
                .all(|job| matches!(job.answers, Answers::One(_)))
        };
        let jobs = plan(&due, &plans(template), true, 40, MAX_QUERY_URL_BYTES);
        assert_eq!(jobs.len(), 2);
        assert!(own(&jobs));
        let jobs = plan(
            &due,
            &plans(DEFAULT_CPU_QUERY),
            false,
            40,
            MAX_QUERY_URL_BYTES,
        );
        assert_eq!(jobs.len(), 2);
        assert!(own(&jobs));
        // A value that reads differently inside a PromQL string stays on its own query.
        let quoted = ClusterSettings {
            labels: [("namespace", "we\"ird"), ("container", "web")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..settings(
                &[("namespace", "x"), ("container", "web")],
                DEFAULT_CPU_QUERY,
            )
        };
        let c = settings(
            &[("namespace", "c"), ("container", "web")],
            DEFAULT_CPU_QUERY,
        );
        let due = [("a", &a), ("c", &c), ("quoted", &quoted)];
        let jobs = plan(
            &due,
            &plans(DEFAULT_CPU_QUERY),
            true,
            40,
            MAX_QUERY_URL_BYTES,
        );
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        assert!(jobs.iter().any(|job| job.answers == Answers::One("quoted")));
    }

    #[test]
    fn a_large_group_is_split_into_chunks_under_the_url_limit() {
        let all: Vec<ClusterSettings> = (0..2000)
            .map(|index| {
                settings(
                    &[
                        ("namespace", &format!("team-{:03}", index / 10)),
                        ("container", &format!("service-{index:04}")),
                    ],
                    DEFAULT_CPU_QUERY,
                )
            })
            .collect();
        let names: Vec<String> = (0..all.len()).map(|index| format!("c{index}")).collect();
        let due: Vec<(&str, &ClusterSettings)> =
            names.iter().map(String::as_str).zip(all.iter()).collect();
        let prefix = "http://127.0.0.1:8428/api/v1/query?query=".len();
        let jobs = plan(
            &due,
            &plans(DEFAULT_CPU_QUERY),
            true,
            prefix,
            MAX_QUERY_URL_BYTES,
        );
        assert!(jobs.len() > 1, "2,000 clusters do not fit in one URL");
        let mut seen = BTreeSet::new();
        for job in &jobs {
            let length = prefix + promql::form_encoded_len(&job.query);
            assert!(length <= MAX_QUERY_URL_BYTES, "{length} bytes");
            for cluster in job.clusters() {
                assert!(seen.insert(cluster), "{cluster} in two chunks");
            }
        }
        assert_eq!(seen.len(), 2000, "every cluster is queried");
        // The greedy cut leaves every chunk but the last nearly full.
        for job in &jobs[..jobs.len() - 1] {
            let length = prefix + promql::form_encoded_len(&job.query);
            assert!(length > MAX_QUERY_URL_BYTES - 100, "{length} bytes");
        }
        eprintln!("2,000 clusters: {} queries", jobs.len());
    }

    /// A small PromQL evaluator for the shapes the batcher accepts (selectors with the four
    /// matchers, `rate` reading a counter's rate off the series, aggregations with `by`, `/` and
    /// `*` matching on all labels, comparisons with numbers), over a fixed set of series.
    mod eval {
        use regex::Regex;
        use std::collections::BTreeMap;

        pub type Labels = BTreeMap<String, String>;
        pub type Vector = Vec<(Labels, f64)>;

        pub struct Parser<'a> {
            pub tokens: Vec<String>,
            pub at: usize,
            pub data: &'a [(Labels, f64)],
        }

        /// Tokens good enough for the evaluator: identifiers, numbers, strings, punctuation.
        pub fn lex(query: &str) -> Vec<String> {
            let chars: Vec<char> = query.chars().collect();
            let mut tokens = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let c = chars[i];
                if c.is_whitespace() {
                    i += 1;
                } else if c == '"' {
                    let mut text = String::from("\"");
                    i += 1;
                    while chars[i] != '"' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        text.push(chars[i]);
                        i += 1;
                    }
                    i += 1;
                    tokens.push(text);
                } else if c.is_alphanumeric() || c == '_' || c == '.' {
                    let start = i;
                    while i < chars.len()
                        && (chars[i].is_alphanumeric() || "_.:".contains(chars[i]))
                    {
                        i += 1;
                    }
                    tokens.push(chars[start..i].iter().collect());
                } else if i + 1 < chars.len()
                    && ["=~", "!~", "!="].contains(&&*format!("{c}{}", chars[i + 1]))
                {
                    tokens.push(format!("{c}{}", chars[i + 1]));
                    i += 2;
                } else {
                    tokens.push(c.to_string());
                    i += 1;
                }
            }
            tokens
        }

        impl Parser<'_> {
            fn peek(&self) -> &str {
                self.tokens.get(self.at).map_or("", String::as_str)
            }
            fn next(&mut self) -> String {
                self.at += 1;
                self.tokens[self.at - 1].clone()
            }
            fn expect(&mut self, token: &str) {
                assert_eq!(self.next(), token, "at {}", self.at);
            }

            pub fn expr(&mut self) -> Vector {
                let mut left = self.term();
                while ["/", "*", ">"].contains(&self.peek()) {
                    let op = self.next();
                    if op == ">" {
                        let bound: f64 = self.next().parse().expect("number");
                        left.retain(|(_, value)| *value > bound);
                        continue;
                    }
                    let right = self.term();
                    left = left
                        .into_iter()
                        .filter_map(|(labels, value)| {
                            let other = right.iter().find(|(other, _)| *other == labels)?.1;
                            Some((
                                labels,
                                if op == "/" {
                                    value / other
                                } else {
                                    value * other
                                },
                            ))
                        })
                        .collect();
                }
                left
            }

            fn labels(&mut self) -> Vec<String> {
                self.expect("(");
                let mut labels = Vec::new();
                while self.peek() != ")" {
                    let label = self.next();
                    if label != "," {
                        labels.push(label);
                    }
                }
                self.expect(")");
                labels
            }

            fn term(&mut self) -> Vector {
                let name = self.next();
                match name.as_str() {
                    "sum" | "max" => {
                        let mut by = if self.peek() == "by" {
                            self.next();
                            Some(self.labels())
                        } else {
                            None
                        };
                        self.expect("(");
                        let inner = self.expr();
                        self.expect(")");
                        if self.peek() == "by" {
                            self.next();
                            by = Some(self.labels());
                        }
                        let by = by.expect("by");
                        let mut groups: BTreeMap<Labels, f64> = BTreeMap::new();
                        for (labels, value) in inner {
                            let key: Labels = labels
                                .into_iter()
                                .filter(|(label, _)| by.contains(label))
                                .collect();
                            let entry = groups.entry(key).or_insert(if name == "sum" {
                                0.0
                            } else {
                                f64::MIN
                            });
                            *entry = if name == "sum" {
                                *entry + value
                            } else {
                                entry.max(value)
                            };
                        }
                        groups.into_iter().collect()
                    }
                    "rate" => {
                        self.expect("(");
                        let inner = self.expr();
                        self.expect("[");
                        while self.next() != "]" {}
                        self.expect(")");
                        inner
                            .into_iter()
                            .map(|(mut labels, value)| {
                                labels.remove("__name__");
                                (labels, value)
                            })
                            .collect()
                    }
                    metric => {
                        let mut matchers =
                            vec![("__name__".to_string(), "=".to_string(), metric.to_string())];
                        if self.peek() == "{" {
                            self.next();
                            while self.peek() != "}" {
                                let label = self.next();
                                let op = self.next();
                                let value = self.next()[1..].to_string();
                                matchers.push((label, op, value));
                                if self.peek() == "," {
                                    self.next();
                                }
                            }
                            self.expect("}");
                        }
                        self.data
                            .iter()
                            .filter(|(labels, _)| {
                                matchers.iter().all(|(label, op, value)| {
                                    let have = labels.get(label).map_or("", String::as_str);
                                    let regex = || {
                                        Regex::new(&format!("^(?:{value})$"))
                                            .expect("regex")
                                            .is_match(have)
                                    };
                                    match op.as_str() {
                                        "=" => have == value,
                                        "!=" => have != value,
                                        "=~" => regex(),
                                        _ => !regex(),
                                    }
                                })
                            })
                            .cloned()
                            .collect()
                    }
                }
            }
        }

        pub fn evaluate(query: &str, data: &[(Labels, f64)]) -> Vector {
            let mut parser = Parser {
                tokens: lex(query),
                at: 0,
                data,
            };
            let result = parser.expr();
            assert_eq!(parser.at, parser.tokens.len(), "{query} read to the end");
            result
        }
    }

    use proptest::prelude::*;

    const TEMPLATES: &[&str] = &[
        DEFAULT_CPU_QUERY,
        r#"sum by (pod) (rate(http_requests_total{namespace="${namespace}",code=~"5.."}[1m]))"#,
        r#"sum(rate(latency_sum{namespace="${namespace}",container="${container}"}[1m])) by (pod) / sum(rate(latency_count{namespace="${namespace}",container="${container}"}[1m])) by (pod)"#,
        r#"max by (pod) (sum by (pod, container) (rate(container_cpu_usage_seconds_total{namespace="${namespace}"}[1m]))) > 1"#,
        r#"sum(envoy_rq{envoy_cluster="${cluster}"}) by (pod)"#,
    ];

    /// Values that a wrong escape or a loose match would confuse: `a.b` and `aXb`, `a+` and `aa`,
    /// Istio names with `|`.
    const VALUES: &[&str] = &[
        "a.b",
        "aXb",
        "a+",
        "aa",
        "x|y",
        "x",
        "outbound|80||s.ns.svc",
        "(p)",
        "p",
    ];

    fn data_strategy() -> impl Strategy<Value = Vec<(eval::Labels, f64)>> {
        let metrics = [
            "container_cpu_usage_seconds_total",
            "http_requests_total",
            "latency_sum",
            "latency_count",
            "envoy_rq",
        ];
        let series = (
            0..metrics.len(),
            0..VALUES.len(),
            0..VALUES.len(),
            0..3usize,
            prop_oneof![Just("200"), Just("503")],
            0..VALUES.len(),
            1..40u32,
        )
            .prop_map(
                move |(metric, namespace, container, pod, code, cluster, value)| {
                    let labels: eval::Labels = [
                        ("__name__", metrics[metric]),
                        ("namespace", VALUES[namespace]),
                        ("container", VALUES[container]),
                        ("pod", ["p0", "p1", "p2"][pod]),
                        ("code", code),
                        ("envoy_cluster", VALUES[cluster]),
                    ]
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect();
                    // Whole numbers: sums are exact in any order.
                    (labels, f64::from(value))
                },
            );
        proptest::collection::vec(series, 0..120)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// For random clusters and random series, the batched query's answer split per cluster
        /// gives every cluster exactly the samples its own query gives.
        #[test]
        fn batched_and_per_cluster_answers_give_identical_sample_sets(
            template in 0..TEMPLATES.len(),
            clusters in proptest::collection::vec((0..VALUES.len(), 0..VALUES.len(), 0..VALUES.len()), 1..12),
            data in data_strategy(),
            budget in prop_oneof![Just(MAX_QUERY_URL_BYTES), Just(400usize)],
        ) {
            let template = TEMPLATES[template];
            let all: Vec<ClusterSettings> = clusters
                .iter()
                .map(|(namespace, container, cluster)| {
                    settings(
                        &[
                            ("namespace", VALUES[*namespace]),
                            ("container", VALUES[*container]),
                            ("cluster", VALUES[*cluster]),
                        ],
                        template,
                    )
                })
                .collect();
            let names: Vec<String> = (0..all.len()).map(|index| format!("c{index}")).collect();
            let due: Vec<(&str, &ClusterSettings)> =
                names.iter().map(String::as_str).zip(all.iter()).collect();
            let sample_set = |series: Vec<Series>| -> HashMap<String, f64> {
                series
                    .into_iter()
                    .filter_map(|one| Some((one.labels.get("pod")?.clone(), one.sample.value)))
                    .collect()
            };
            let answer = |query: &str| -> Vec<Series> {
                eval::evaluate(query, &data)
                    .into_iter()
                    .map(|(labels, value)| Series {
                        labels: labels.into_iter().collect(),
                        sample: Sample { value, timestamp_ms: 1 },
                    })
                    .collect()
            };
            let mut batched: HashMap<&str, HashMap<String, f64>> = HashMap::new();
            let jobs = plan(&due, &plans(template), true, 0, budget);
            prop_assert!(all.len() < 2 || budget < MAX_QUERY_URL_BYTES || jobs.len() == 1);
            for job in &jobs {
                for (cluster, series) in job.split(answer(&job.query)) {
                    prop_assert!(batched.insert(cluster, sample_set(series)).is_none());
                }
            }
            for (name, settings) in &due {
                let own = sample_set(answer(&settings.queries.as_ref().expect("queries").cpu));
                prop_assert_eq!(&batched[name], &own, "cluster {}", name);
            }
        }
    }
}
