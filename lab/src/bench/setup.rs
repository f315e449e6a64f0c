//! Configuration texts of a bench run: Envoy bootstrap, adaptive-eds config, scrape config.

use crate::fleet::{Pod, RestartNode};
use clap::ValueEnum;

/// One balancing setup compared by `lab bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum BenchPolicy {
    /// Envoy ROUND_ROBIN over STATIC endpoints.
    RoundRobin,
    /// Envoy LEAST_REQUEST over STATIC endpoints: the baseline.
    LeastRequest,
    /// Envoy client-side weighted round robin fed by the emulator's ORCA headers.
    Cswrr,
    /// Envoy LEAST_REQUEST over adaptive-eds weights, `distance`.
    Distance,
    /// Envoy LEAST_REQUEST over adaptive-eds weights, `capacity` + `balance`.
    CapacityBalance,
    /// Envoy LEAST_REQUEST over adaptive-eds weights, `capacity` + `latency`.
    CapacityLatency,
    /// Diagnostic, not in the default set: Envoy weighted ROUND_ROBIN over `capacity` +
    /// `latency` weights, to separate the engine's plan from LEAST_REQUEST's reshaping of it.
    CapacityLatencyRoundRobin,
}

impl BenchPolicy {
    /// Every policy, in report order.
    pub const ALL: [BenchPolicy; 6] = [
        Self::RoundRobin,
        Self::LeastRequest,
        Self::Cswrr,
        Self::Distance,
        Self::CapacityBalance,
        Self::CapacityLatency,
    ];

    /// Name used in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequest => "least_request",
            Self::Cswrr => "cswrr",
            Self::Distance => "eds_distance",
            Self::CapacityBalance => "eds_capacity_balance",
            Self::CapacityLatency => "eds_capacity_latency",
            Self::CapacityLatencyRoundRobin => "eds_capacity_latency_rr",
        }
    }

    /// The adaptive-eds `weighting` algorithm and objective, when our server is in the loop.
    pub fn weighting(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Distance => Some(("distance", "latency")),
            Self::CapacityBalance => Some(("capacity", "balance")),
            Self::CapacityLatency | Self::CapacityLatencyRoundRobin => {
                Some(("capacity", "latency"))
            }
            Self::RoundRobin | Self::LeastRequest | Self::Cswrr => None,
        }
    }
}

/// Name of the Envoy cluster (and EDS resource) in front of the fleet.
pub const CLUSTER: &str = "fleet";

/// The CSWRR penalty is set explicitly: it only matters when backends report `eps`, and
/// Envoy 1.40 reads an unset `error_utilization_penalty` as 0 (the documented default is 1.0;
/// measured: pods reporting eps, penalty unset, 33.6% of the requests failed as without eps).
fn cluster_lb(policy: BenchPolicy) -> String {
    match policy {
        BenchPolicy::RoundRobin | BenchPolicy::CapacityLatencyRoundRobin => {
            "    lb_policy: ROUND_ROBIN\n".to_owned()
        }
        BenchPolicy::Cswrr => "    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: envoy.load_balancing_policies.client_side_weighted_round_robin\n          typed_config:\n            \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin\n            blackout_period: 10s\n            weight_update_period: 1s\n            error_utilization_penalty: 1.0\n".to_owned(),
        _ => "    lb_policy: LEAST_REQUEST\n".to_owned(),
    }
}

fn static_endpoints(ports: &[u16]) -> String {
    let endpoints: Vec<String> = ports
        .iter()
        .map(|port| format!("          - {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}\n"))
        .collect();
    format!(
        "    type: STATIC\n    load_assignment:\n      cluster_name: {CLUSTER}\n      endpoints:\n      - lb_endpoints:\n{}",
        endpoints.concat()
    )
}

/// What Envoy sends back to adaptive-eds besides its ADS requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvoyReports {
    /// Nothing: metrics reach the server another way.
    #[default]
    None,
    /// Load reports (LRS) to the xDS server every interval it asks for; with `orca`, the
    /// backends' ORCA `cpu_utilization` rides along per endpoint.
    LoadReports {
        /// Forward ORCA `cpu_utilization` (`lrs_report_endpoint_metrics`).
        orca: bool,
    },
}

/// What a bench Envoy does besides balancing: the reports it sends back and whether it ejects
/// failing hosts on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EnvoyExtras {
    /// Load reports to our server, if any.
    pub reports: EnvoyReports,
    /// Envoy's outlier detection on the fleet cluster with its defaults: a host answering 5
    /// consecutive 5xx is ejected at once for 30 s (times the number of its ejections), at most
    /// 10% of the hosts (at least one); passive, inside each Envoy, no metrics involved.
    pub outlier_detection: bool,
}

/// Bootstrap of Envoy number `envoy` (node id `lab-bench-<envoy>`): one listener on
/// `listener_port` routing to the fleet cluster, with STATIC endpoints for the Envoy-only
/// policies or EDS over ADS from `xds_port` for ours, load reports to the same server and
/// outlier detection when asked for.
pub fn envoy_bootstrap(
    policy: BenchPolicy,
    envoy: usize,
    admin_port: u16,
    listener_port: u16,
    xds_port: Option<u16>,
    ports: &[u16],
    extras: EnvoyExtras,
) -> String {
    let reports = extras.reports;
    let mut text = format!(
        "node: {{ id: lab-bench-{envoy}, cluster: lab }}\n\
admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}\n"
    );
    let load_reports = xds_port.is_some() && matches!(reports, EnvoyReports::LoadReports { .. });
    if load_reports {
        text.push_str("cluster_manager:\n  load_stats_config:\n    api_type: GRPC\n    transport_api_version: V3\n    grpc_services: [{ envoy_grpc: { cluster_name: adaptive_eds } }]\n");
    }
    if xds_port.is_some() {
        text.push_str("dynamic_resources:\n  ads_config:\n    api_type: GRPC\n    transport_api_version: V3\n    set_node_on_first_message_only: true\n    grpc_services: [{ envoy_grpc: { cluster_name: adaptive_eds } }]\n");
    }
    text.push_str(&format!(
        "static_resources:\n  listeners:\n  - name: ingress\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: ingress\n          route_config:\n            virtual_hosts:\n            - {{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {CLUSTER}, timeout: 10s }} }}] }}\n          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}\n  clusters:\n"
    ));
    if let Some(xds_port) = xds_port {
        text.push_str(&format!("  - name: adaptive_eds\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{ http2_protocol_options: {{}} }}\n    load_assignment:\n      cluster_name: adaptive_eds\n      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }} }}] }}]\n"));
    }
    text.push_str(&format!("  - name: {CLUSTER}\n    connect_timeout: 1s\n"));
    if load_reports && reports == (EnvoyReports::LoadReports { orca: true }) {
        text.push_str("    lrs_report_endpoint_metrics: [cpu_utilization]\n");
    }
    text.push_str(&cluster_lb(policy));
    if extras.outlier_detection {
        text.push_str("    outlier_detection: {}\n");
    }
    match xds_port {
        Some(_) => text.push_str("    type: EDS\n    eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }\n"),
        None => text.push_str(&static_endpoints(ports)),
    }
    text
}

/// PromQL giving each pod's CPU limit (its cores) as constants, since the emulator exports none.
fn cpu_limit_query(pods: &[Pod]) -> String {
    let parts: Vec<String> = pods
        .iter()
        .map(|pod| {
            format!(
                "label_replace(vector({}), \"pod\", \"{}\", \"\", \"\")",
                pod.cores, pod.name
            )
        })
        .collect();
    parts.join(" or ")
}

/// How pod metrics reach adaptive-eds in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum MetricsPath {
    /// VictoriaMetrics scrapes the pods every second; adaptive-eds pulls with PromQL each tick.
    #[default]
    Pull,
    /// vmagent scrapes the pods every second and remote-writes to adaptive-eds, which computes
    /// the rates itself and reads the CPU limits from the limit gauge (no query, no store).
    Stream,
    /// Envoy's load reports (LRS) every second only, ORCA CPU riding along: no metrics store.
    Lrs,
    /// The PromQL pull and load reports together.
    #[value(name = "pull+lrs")]
    PullLrs,
    /// Remote-write and load reports together.
    #[value(name = "stream+lrs")]
    StreamLrs,
}

impl MetricsPath {
    /// The server pulls from VictoriaMetrics.
    pub fn pulls(self) -> bool {
        matches!(self, Self::Pull | Self::PullLrs)
    }

    /// vmagent remote-writes to the server.
    pub fn streams(self) -> bool {
        matches!(self, Self::Stream | Self::StreamLrs)
    }

    /// Envoy sends load reports to the server.
    pub fn load_reports(self) -> bool {
        matches!(self, Self::Lrs | Self::PullLrs | Self::StreamLrs)
    }

    /// Name used in reports and results folders.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Stream => "stream",
            Self::Lrs => "lrs",
            Self::PullLrs => "pull+lrs",
            Self::StreamLrs => "stream+lrs",
        }
    }
}

/// Where adaptive-eds gets its metrics from, for its config.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsSource<'a> {
    /// PromQL against this VictoriaMetrics base URL.
    pub pull: Option<&'a str>,
    /// Remote-write from vmagent (limits from the pods' `kube_pod_container_resource_limits`).
    pub stream: bool,
    /// Envoy's load reports, every `load_report_interval` seconds.
    pub load_reports: bool,
}

/// What the adaptive-eds config of a run is made of.
#[derive(Debug, Clone)]
pub struct ServerSettings<'a> {
    /// Policy (gives the algorithm and objective).
    pub policy: BenchPolicy,
    /// Namespace label of the fleet's metrics.
    pub namespace: &'a str,
    /// The pods, in fleet order.
    pub pods: &'a [Pod],
    /// Each pod's port, index-aligned with `pods`.
    pub ports: &'a [u16],
    /// Each pod's node name, index-aligned with `pods` (see [`pod_nodes`]).
    pub nodes: &'a [String],
    /// Indices (into `pods`) of the endpoint set served to Envoy; the CPU limits cover every pod.
    pub endpoints: &'a [usize],
    /// xDS listen port.
    pub xds_port: u16,
    /// Admin (metrics, health) listen port.
    pub admin_port: u16,
    /// Where the metrics come from.
    pub metrics: MetricsSource<'a>,
    /// `weighting.probe_share`, when not the server's default.
    pub probe_share: Option<f64>,
    /// `weighting.surge_headroom`, when not the server's default.
    pub surge_headroom: Option<f64>,
    /// Window of the counter rates (PromQL `rate(...[N])` or remote-write `rate_window`), seconds.
    pub rate_window: u64,
    /// The server's `tick`, seconds.
    pub tick_seconds: u64,
    /// Give the pulled or streamed source an error signal (`error_query`, `error_labels`);
    /// load reports always carry errors.
    pub error_signal: bool,
}

/// adaptive-eds config: one cluster of the fleet's pods, PromQL pull from VictoriaMetrics.
pub fn server_config(settings: &ServerSettings<'_>) -> String {
    let ServerSettings {
        policy,
        namespace,
        pods,
        ports,
        nodes,
        endpoints,
        xds_port,
        admin_port,
        metrics,
        probe_share,
        surge_headroom,
        rate_window,
        tick_seconds,
        error_signal,
    } = *settings;
    let (algorithm, objective) = policy.weighting().unwrap_or(("static", "latency"));
    let container = pods.first().map_or("app", |pod| pod.container.as_str());
    let mut source = String::new();
    if let Some(victoria_url) = metrics.pull {
        // The rps query sums every status code: `rps` counts all completed requests and the
        // errors are a part of it.
        source.push_str(&format!(
                "  prometheus:\n    url: {victoria_url}\n    cpu_query: 'sum(rate(container_cpu_usage_seconds_total{{namespace=\"${{namespace}}\",container=\"${{container}}\"}}[{rate_window}s])) by (pod)'\n    rps_query: 'sum(rate(emulator_requests_total{{namespace=\"${{namespace}}\"}}[{rate_window}s])) by (pod)'\n    cpu_limit_query: '{limits}'\n    timeout: 1s\n",
            limits = cpu_limit_query(pods),
        ));
        if error_signal {
            source.push_str(&format!(
                "    error_query: 'sum(rate(emulator_requests_total{{namespace=\"${{namespace}}\",code=~\"5..\"}}[{rate_window}s])) by (pod)'\n"
            ));
        }
    }
    if metrics.stream {
        source.push_str(&format!(
                "  remote_write:\n    enabled: true\n    rps_metric: emulator_requests_total\n    cpu_limit_metric: kube_pod_container_resource_limits\n    rate_window: {rate_window}s\n    match_labels: {{ namespace: {namespace} }}\n"
        ));
        if error_signal {
            source.push_str("    error_labels: { code: \"5..\" }\n");
        }
    }
    if metrics.load_reports {
        source.push_str("  load_reports: { enabled: true, interval: 1s }\n");
    }
    let mut text = format!(
        "xds: {{ listen: \"127.0.0.1:{xds_port}\" }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\ntick: {tick_seconds}s\nmetrics:\n{source}weighting:\n  algorithm: {algorithm}\n  objective: {objective}\n{probe}{surge}clusters:\n  - name: {CLUSTER}\n    namespace: {namespace}\n    container: {container}\n    endpoints:\n",
        probe = probe_share.map_or(String::new(), |share| format!("  probe_share: {share}\n")),
        surge = surge_headroom.map_or(String::new(), |headroom| {
            format!("  surge_headroom: {headroom}\n")
        }),
    );
    for &index in endpoints {
        let (Some(pod), Some(port)) = (pods.get(index), ports.get(index)) else {
            continue;
        };
        let node = nodes
            .get(index)
            .map_or(String::new(), |node| format!(", node: {node}"));
        text.push_str(&format!(
            "      - {{ address: 127.0.0.1, port: {port}, pod: {}{node} }}\n",
            pod.name
        ));
    }
    text
}

/// The node of each pod, index-aligned with `pods`: `node-<pod>` for the first `initial` pods,
/// and for a rolling restart's replacements (pod `initial + i` replaces pod `i`) a node of their
/// own, or with [`RestartNode::Same`] the node of the pod they replace.
pub fn pod_nodes(pods: &[Pod], initial: usize, placement: RestartNode) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::with_capacity(pods.len());
    for (index, pod) in pods.iter().enumerate() {
        let node = match index.checked_sub(initial) {
            Some(replaced) if placement == RestartNode::Same && replaced < initial => {
                nodes[replaced].clone()
            }
            _ => format!("node-{}", pod.name),
        };
        nodes.push(node);
    }
    nodes
}

/// VictoriaMetrics or vmagent scrape config: every pod's `/metrics` every `interval` seconds.
pub fn scrape_config(ports: &[u16], interval: u64) -> String {
    let targets: Vec<String> = ports
        .iter()
        .map(|port| format!("\"127.0.0.1:{port}\""))
        .collect();
    format!(
        "global: {{ scrape_interval: {interval}s }}\nscrape_configs:\n  - job_name: fleet\n    scrape_interval: {interval}s\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

/// Sums, per pod, the samples of `metric` in a Prometheus text page (`name{...pod="x"...} value`).
pub fn counter_by_pod(page: &str, metric: &str) -> std::collections::BTreeMap<String, f64> {
    let mut totals = std::collections::BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !rest.starts_with('{') {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let pod = labels
            .split_once("pod=\"")
            .and_then(|(_, tail)| tail.split_once('"'))
            .map(|(pod, _)| pod.to_owned());
        if let (Some(pod), Ok(value)) = (pod, value.trim().parse::<f64>()) {
            *totals.entry(pod).or_insert(0.0) += value;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_by_pod() {
        let page = "# HELP x\nemulator_requests_total{namespace=\"lab\",pod=\"a-0\"} 12\nemulator_requests_total{namespace=\"lab\",pod=\"a-1\"} 3\nemulator_request_duration_seconds_count{pod=\"a-0\"} 9\n";
        let totals = counter_by_pod(page, "emulator_requests_total");
        assert_eq!(totals.get("a-0"), Some(&12.0));
        assert_eq!(totals.get("a-1"), Some(&3.0));
        assert_eq!(totals.len(), 2);
    }

    #[test]
    fn bootstraps_name_the_policy() {
        let none = EnvoyExtras::default();
        let text = envoy_bootstrap(BenchPolicy::Cswrr, 0, 1, 2, None, &[3, 4], none);
        assert!(text.contains("client_side_weighted_round_robin"));
        assert!(text.contains("port_value: 4"));
        assert!(text.contains("id: lab-bench-0,"));
        let second = envoy_bootstrap(BenchPolicy::Cswrr, 1, 1, 2, None, &[3, 4], none);
        assert!(second.contains("id: lab-bench-1,"));
        let text = envoy_bootstrap(BenchPolicy::CapacityLatency, 0, 1, 2, Some(5), &[3], none);
        assert!(text.contains("type: EDS") && text.contains("LEAST_REQUEST"));
        assert!(!text.contains("load_stats_config"));
        assert!(!text.contains("outlier_detection"));
        let lrs = EnvoyExtras {
            reports: EnvoyReports::LoadReports { orca: true },
            outlier_detection: false,
        };
        let text = envoy_bootstrap(BenchPolicy::CapacityLatency, 0, 1, 2, Some(5), &[3], lrs);
        assert!(text.contains("load_stats_config"), "{text}");
        assert!(text.contains("lrs_report_endpoint_metrics: [cpu_utilization]"));
        // Without our server there is no one to report to.
        let text = envoy_bootstrap(BenchPolicy::LeastRequest, 0, 1, 2, None, &[3], lrs);
        assert!(!text.contains("load_stats_config"));
        let ejecting = EnvoyExtras {
            outlier_detection: true,
            ..EnvoyExtras::default()
        };
        for xds in [None, Some(5)] {
            let text = envoy_bootstrap(BenchPolicy::LeastRequest, 0, 1, 2, xds, &[3], ejecting);
            let cluster = text.split("- name: fleet").nth(1).unwrap_or_default();
            assert!(cluster.contains("outlier_detection: {}"), "{text}");
        }
    }

    fn settings<'a>(
        pods: &'a [Pod],
        metrics: MetricsSource<'a>,
        errors: bool,
    ) -> ServerSettings<'a> {
        ServerSettings {
            policy: BenchPolicy::CapacityLatency,
            namespace: "lab",
            pods,
            ports: &[21001],
            nodes: &[],
            endpoints: &[0],
            xds_port: 1,
            admin_port: 2,
            metrics,
            probe_share: None,
            surge_headroom: None,
            rate_window: 5,
            tick_seconds: 1,
            error_signal: errors,
        }
    }

    /// Each config the bench writes is one the server accepts, with and without an error signal.
    #[test]
    fn server_configs_carry_the_error_signal_and_load_reports_and_parse() {
        let fleet = crate::fleet::parse_fleet(
            "namespace: lab\ngroups:\n  - name: p\n    replicas: 1\n    cores: 4\n    service_time: { mean_ms: 2.0, sigma: 0.2 }\n",
            "test",
        )
        .unwrap();
        let pods = fleet.pods();
        let sources = [
            MetricsSource {
                pull: Some("http://127.0.0.1:9"),
                ..MetricsSource::default()
            },
            MetricsSource {
                stream: true,
                ..MetricsSource::default()
            },
            MetricsSource {
                load_reports: true,
                ..MetricsSource::default()
            },
            MetricsSource {
                pull: Some("http://127.0.0.1:9"),
                load_reports: true,
                ..MetricsSource::default()
            },
        ];
        for source in sources {
            for errors in [true, false] {
                let text = server_config(&settings(&pods, source, errors));
                let parsed = adaptive_eds::config::parse(&text);
                assert!(parsed.is_ok(), "{text}\n{:?}", parsed.err());
                let has_error_signal =
                    text.contains("error_query") || text.contains("error_labels");
                assert_eq!(
                    has_error_signal,
                    errors && (source.pull.is_some() || source.stream),
                    "{text}"
                );
                assert_eq!(text.contains("load_reports"), source.load_reports, "{text}");
            }
        }
        let pulled = server_config(&settings(&pods, sources[0], true));
        assert!(pulled.contains("code=~\"5..\""), "{pulled}");
        let prod = server_config(&ServerSettings {
            rate_window: 60,
            tick_seconds: 10,
            ..settings(&pods, sources[0], true)
        });
        assert!(adaptive_eds::config::parse(&prod).is_ok(), "{prod}");
        assert!(
            prod.contains("tick: 10s") && prod.contains("[60s]"),
            "{prod}"
        );
        let rolled = fleet.with_replacements().pods();
        let nodes = pod_nodes(&rolled, 1, RestartNode::New);
        assert_eq!(nodes, ["node-p-0", "node-p-v2-0"]);
        let second = server_config(&ServerSettings {
            ports: &[21001, 21002],
            nodes: &nodes,
            endpoints: &[1],
            ..settings(&rolled, sources[0], true)
        });
        assert!(adaptive_eds::config::parse(&second).is_ok(), "{second}");
        assert!(
            !second.contains("port: 21001") && second.contains("port: 21002"),
            "{second}"
        );
        assert!(second.contains("node: node-p-v2-0"), "{second}");
        let same = pod_nodes(&rolled, 1, RestartNode::Same);
        assert_eq!(same, ["node-p-0", "node-p-0"], "the replaced pod's node");
        assert!(second.contains("\"p-0\""), "every pod's limit: {second}");
    }
}
