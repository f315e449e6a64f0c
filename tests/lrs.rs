//! End to end with real Envoys reporting their load (LRS) to the server: the per-endpoint rates,
//! errors and in-flight counts the server aggregates match what the Envoys' own admin counters
//! say; a stream that ends stops counting; an Envoy that reconnects is not counted twice; the
//! Istio-like bootstrap reports under Istio's cluster names.

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use adaptive_eds::inspect::pb::{inspect_client::InspectClient, GetClusterRequest};
use support::traffic::{SwitchableBackends, Traffic};
use support::{http_get, spawn_server, wait_for, wait_ready, Envoy, Server};

/// Test backends on loopback: each answers `/` after `delay`; a failing one answers every
/// `fail_every`-th request with 503 (after the same delay, so in-flight counts stay simple); one
/// with a CPU figure sends it as ORCA (`endpoint-load-metrics: TEXT cpu_utilization=...`).
struct Backends {
    ports: Vec<u16>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Backends {
    async fn start(specs: &[(Duration, Option<u64>)]) -> Self {
        let specs: Vec<_> = specs
            .iter()
            .map(|&(delay, fail_every)| (delay, fail_every, None))
            .collect();
        Self::start_with_cpu(&specs).await
    }

    async fn start_with_cpu(specs: &[(Duration, Option<u64>, Option<f64>)]) -> Self {
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for &(delay, fail_every, cpu) in specs {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            ports.push(listener.local_addr().expect("backend address").port());
            let served = Arc::new(AtomicU64::new(0));
            let app = axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let served = Arc::clone(&served);
                    async move {
                        tokio::time::sleep(delay).await;
                        let count = served.fetch_add(1, Ordering::Relaxed) + 1;
                        let status = match fail_every {
                            Some(every) if count.is_multiple_of(every) => {
                                axum::http::StatusCode::SERVICE_UNAVAILABLE
                            }
                            _ => axum::http::StatusCode::OK,
                        };
                        let orca = cpu
                            .map(|cpu| format!("TEXT cpu_utilization={cpu}"))
                            .unwrap_or_default();
                        (status, [("endpoint-load-metrics", orca)], "ok")
                    }
                }),
            );
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Self { ports, tasks }
    }

    fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn config(cluster: &str, endpoints: &[String]) -> String {
    let mut yaml = format!(
        "tick: 1s\nmetrics:\n  load_reports: {{ enabled: true, interval: 1s }}\n\
         # Equal weights throughout, so traffic is steady while it is measured.\n\
         weighting: {{ min_weight: 100, max_weight: 100 }}\n\
         clusters:\n  - name: \"{cluster}\"\n    endpoints:\n"
    );
    for endpoint in endpoints {
        let (address, port) = endpoint.split_once(':').expect("address:port");
        yaml.push_str(&format!("      - {{ address: {address}, port: {port} }}\n"));
    }
    yaml
}

/// Per-host counters and gauges of `cluster` from Envoy's `/clusters?format=json`.
async fn host_stats(envoy: &Envoy, cluster: &str) -> Option<HashMap<String, HashMap<String, u64>>> {
    let (_, body) = http_get(&envoy.admin_url("/clusters?format=json")).await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let status = json["cluster_statuses"]
        .as_array()?
        .iter()
        .find(|status| status["name"] == cluster)?;
    let mut hosts = HashMap::new();
    for host in status["host_statuses"].as_array()? {
        let socket = &host["address"]["socket_address"];
        let name = format!(
            "{}:{}",
            socket["address"].as_str().unwrap_or(""),
            socket["port_value"]
        );
        let stats = host["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|stat| {
                let value = match &stat["value"] {
                    serde_json::Value::String(text) => text.parse().ok()?,
                    value => value.as_u64().unwrap_or(0),
                };
                Some((stat["name"].as_str()?.to_string(), value))
            })
            .collect();
        hosts.insert(name, stats);
    }
    Some(hosts)
}

/// Our per-endpoint gauge `family` for `cluster`, by endpoint, from `/metrics`.
fn gauges(metrics: &str, family: &str, cluster: &str) -> HashMap<String, f64> {
    let prefix = format!("{family}{{cluster=\"{cluster}\",endpoint=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse().ok()?;
            Some((endpoint.to_string(), value))
        })
        .collect()
}

/// One reading of our aggregates for `cluster`.
#[derive(Debug, Default)]
struct Ours {
    rps: HashMap<String, f64>,
    errors: HashMap<String, f64>,
    in_flight: HashMap<String, f64>,
}

async fn ours(server: &Server, cluster: &str) -> Option<Ours> {
    let (_, metrics) = http_get(&server.admin_url("/metrics")).await?;
    Some(Ours {
        rps: gauges(
            &metrics,
            "adaptive_eds_lrs_endpoint_requests_per_second",
            cluster,
        ),
        errors: gauges(
            &metrics,
            "adaptive_eds_lrs_endpoint_errors_per_second",
            cluster,
        ),
        in_flight: gauges(
            &metrics,
            "adaptive_eds_lrs_endpoint_requests_in_flight",
            cluster,
        ),
    })
}

async fn metric_value(server: &Server, line_prefix: &str) -> Option<f64> {
    let (_, metrics) = http_get(&server.admin_url("/metrics")).await?;
    metrics
        .lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn stat(hosts: &HashMap<String, HashMap<String, u64>>, host: &str, name: &str) -> u64 {
    hosts
        .get(host)
        .and_then(|stats| stats.get(name))
        .copied()
        .unwrap_or(0)
}

/// What the Envoys' admin counters say about each endpoint over a measured period.
#[derive(Debug, Default)]
struct Measured {
    /// (rq_success + rq_error) per second, summed over the Envoys.
    completed: HashMap<String, f64>,
    /// rq_error per second.
    errors: HashMap<String, f64>,
    /// rq_total per second (requests issued).
    issued: HashMap<String, f64>,
    /// Mean of the sampled rq_active, summed over the Envoys and endpoints.
    active: f64,
    /// Mean of our per-endpoint figures over the same period.
    ours: Ours,
}

/// Samples the Envoys' admin counters and our gauges every second for `period`.
async fn measure(server: &Server, envoys: &[&Envoy], cluster: &str, period: Duration) -> Measured {
    let before: Vec<_> =
        futures::future::join_all(envoys.iter().map(|envoy| host_stats(envoy, cluster)))
            .await
            .into_iter()
            .map(|stats| stats.expect("Envoy host stats"))
            .collect();
    let started = Instant::now();
    let mut samples = 0.0;
    let mut measured = Measured::default();
    while started.elapsed() < period {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = ours(server, cluster).await.expect("our metrics");
        for (target, source) in [
            (&mut measured.ours.rps, &now.rps),
            (&mut measured.ours.errors, &now.errors),
            (&mut measured.ours.in_flight, &now.in_flight),
        ] {
            for (endpoint, value) in source {
                *target.entry(endpoint.clone()).or_default() += value;
            }
        }
        for envoy in envoys {
            let hosts = host_stats(envoy, cluster).await.expect("Envoy host stats");
            measured.active += hosts
                .keys()
                .map(|host| stat(&hosts, host, "rq_active") as f64)
                .sum::<f64>();
        }
        samples += 1.0;
    }
    let after: Vec<_> =
        futures::future::join_all(envoys.iter().map(|envoy| host_stats(envoy, cluster)))
            .await
            .into_iter()
            .map(|stats| stats.expect("Envoy host stats"))
            .collect();
    let seconds = started.elapsed().as_secs_f64();
    for (before, after) in before.iter().zip(&after) {
        for host in after.keys() {
            let delta =
                |name: &str| (stat(after, host, name) - stat(before, host, name)) as f64 / seconds;
            *measured.completed.entry(host.clone()).or_default() +=
                delta("rq_success") + delta("rq_error");
            *measured.errors.entry(host.clone()).or_default() += delta("rq_error");
            *measured.issued.entry(host.clone()).or_default() += delta("rq_total");
        }
    }
    measured.active /= samples;
    for map in [
        &mut measured.ours.rps,
        &mut measured.ours.errors,
        &mut measured.ours.in_flight,
    ] {
        for value in map.values_mut() {
            *value /= samples;
        }
    }
    measured
}

/// Our mean over the period against Envoy's counters over the same period. The figures are
/// rates over the last two 1 s reports, published every second, so ours lag Envoy's by up to
/// about 2 s of a steady load; with 6 s of closed-loop traffic the two differ by the load's own
/// wobble (LEAST_REQUEST evens it out) plus at most one edge interval each side: 15% and 3/s.
fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 0.15 * theirs + 3.0
}

async fn wait_reporting(server: &Server, cluster: &str, endpoints: &[String]) {
    wait_for(
        Duration::from_secs(30),
        "every endpoint's load reported",
        || async {
            let now = ours(server, cluster).await?;
            endpoints
                .iter()
                .all(|endpoint| now.rps.get(endpoint).is_some_and(|rps| *rps > 1.0))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_reports_match_their_admin_counters() {
    // 40 ms per request; the second backend fails one request in three.
    let delay = Duration::from_millis(40);
    let backends = Backends::start(&[(delay, None), (delay, Some(3)), (delay, None)]).await;
    let endpoints = backends.endpoints();
    let server = Server::start(&config("checkout", &endpoints)).await;
    let envoy_a = Envoy::start_with(
        "ads-sotw.yaml",
        server.xds_port,
        &[("id: envoy-ads-sotw", "id: envoy-lrs-a")],
    )
    .await;
    let envoy_b = Envoy::start_with(
        "ads-delta.yaml",
        server.xds_port,
        &[("id: envoy-ads-delta", "id: envoy-lrs-b")],
    )
    .await;
    let expected: Vec<(&str, u64)> = endpoints
        .iter()
        .map(|endpoint| (endpoint.as_str(), 100))
        .collect();
    for envoy in [&envoy_a, &envoy_b] {
        envoy
            .wait_for_hosts("checkout", &expected, Duration::from_secs(20))
            .await;
    }
    // Four requests always in flight through each Envoy.
    let workers = 4;
    let traffic_a = Traffic::start(envoy_a.listener_port, workers, Duration::from_secs(60));
    let traffic_b = Traffic::start(envoy_b.listener_port, workers, Duration::from_secs(60));
    wait_reporting(&server, "checkout", &endpoints).await;
    // Let both streams' two-report windows fill with steady traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let measured = measure(
        &server,
        &[&envoy_a, &envoy_b],
        "checkout",
        Duration::from_secs(6),
    )
    .await;
    eprintln!("{measured:#?}");
    let mut our_in_flight = 0.0;
    for endpoint in &endpoints {
        let completed = measured.completed[endpoint];
        let errors = measured.errors[endpoint];
        let (rps, our_errors) = (measured.ours.rps[endpoint], measured.ours.errors[endpoint]);
        assert!(completed > 20.0, "{endpoint}: Envoy counted {completed}/s");
        assert!(
            close(rps, completed),
            "{endpoint}: ours {rps}/s, Envoy {completed}/s"
        );
        assert!(
            close(our_errors, errors),
            "{endpoint}: ours {our_errors} errors/s, Envoy {errors}/s"
        );
        // Issued and completed differ by the change in what is in flight: a few requests.
        assert!(close(measured.issued[endpoint], completed), "{measured:?}");
        our_in_flight += measured.ours.in_flight[endpoint];
        // Little's law: each request takes the backend's 40 ms and a little of Envoy's time.
        let latency = measured.ours.in_flight[endpoint] / rps;
        assert!(
            (0.025..0.1).contains(&latency),
            "{endpoint}: observed latency {latency}"
        );
    }
    assert!(measured.errors[&endpoints[1]] > 5.0, "{measured:?}");
    assert!(measured.errors[&endpoints[0]] == 0.0 && measured.ours.errors[&endpoints[0]] == 0.0);
    // 2 x 4 closed-loop workers keep about 8 requests in flight (less the client's own time).
    assert!(
        (our_in_flight - measured.active).abs() <= 2.5 && (4.0..=9.0).contains(&our_in_flight),
        "in flight: ours {our_in_flight}, Envoy {}",
        measured.active
    );

    // Inspect shows the same figures, as the weighting read them at its last tick.
    let mut inspect = InspectClient::connect(server.xds_url())
        .await
        .expect("Inspect");
    let cluster = inspect
        .get_cluster(GetClusterRequest {
            name: "checkout".into(),
        })
        .await
        .expect("GetCluster")
        .into_inner();
    for endpoint in &cluster.endpoints {
        let name = format!("{}:{}", endpoint.address, endpoint.port);
        let completed = measured.completed[&name];
        let rps = endpoint
            .requests_per_second
            .expect("requests_per_second in Inspect");
        assert!(
            close(rps, completed),
            "{name}: Inspect {rps}/s, Envoy {completed}/s"
        );
        let ratio = endpoint.error_ratio.expect("error_ratio in Inspect");
        let expected_ratio = measured.errors[&name] / completed;
        assert!(
            (ratio - expected_ratio).abs() < 0.1,
            "{name}: ratio {ratio}, Envoy {expected_ratio}"
        );
        assert!(endpoint.errors_per_second.is_some(), "{endpoint:?}");
        assert!(endpoint.requests_in_flight.is_some(), "{endpoint:?}");
        let latency = endpoint
            .observed_latency_seconds
            .expect("observed latency in Inspect");
        assert!((0.0..0.2).contains(&latency), "{name}: {latency}");
    }

    // A stream that ends stops counting: with Envoy B gone, ours follow Envoy A alone.
    let sent_b = traffic_b.stop().await;
    drop(envoy_b);
    wait_for(Duration::from_secs(10), "one LRS stream left", || async {
        (metric_value(&server, "adaptive_eds_xds_streams{kind=\"lrs\"}").await? == 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alone = measure(&server, &[&envoy_a], "checkout", Duration::from_secs(4)).await;
    for endpoint in &endpoints {
        let (rps, completed) = (alone.ours.rps[endpoint], alone.completed[endpoint]);
        assert!(
            close(rps, completed),
            "{endpoint} after B left: ours {rps}/s, Envoy A {completed}/s"
        );
    }
    let sent_a = traffic_a.stop().await;
    eprintln!("sent through A: {sent_a}, through B: {sent_b}");

    let first = metric_value(
        &server,
        "adaptive_eds_lrs_cluster_stats_total{result=\"first_report\"}",
    )
    .await
    .unwrap_or(0.0);
    let accepted = metric_value(
        &server,
        "adaptive_eds_lrs_cluster_stats_total{result=\"accepted\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(
        first >= 2.0 && accepted > 10.0,
        "first {first}, accepted {accepted}"
    );
    for result in ["bad_interval", "impossible_counters"] {
        assert_eq!(
            metric_value(
                &server,
                &format!("adaptive_eds_lrs_cluster_stats_total{{result=\"{result}\"}}")
            )
            .await,
            None,
            "real Envoys sent no {result} report"
        );
    }
    // Asked for all clusters, the Envoys also report `payments` and `adaptive_eds`, which this
    // config does not serve: ignored and counted.
    let unknown = metric_value(
        &server,
        "adaptive_eds_lrs_cluster_stats_total{result=\"unknown_cluster\"}",
    )
    .await;
    assert!(unknown.is_some_and(|count| count > 0.0), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_reconnecting_after_an_outage_is_not_counted_twice() {
    let delay = Duration::from_millis(20);
    let backends = Backends::start(&[(delay, None), (delay, None)]).await;
    let endpoints = backends.endpoints();
    let mut server = Server::start(&config("checkout", &endpoints)).await;
    let envoy = Envoy::start("ads-sotw.yaml", server.xds_port).await;
    let expected: Vec<(&str, u64)> = endpoints
        .iter()
        .map(|endpoint| (endpoint.as_str(), 100))
        .collect();
    envoy
        .wait_for_hosts("checkout", &expected, Duration::from_secs(20))
        .await;
    let traffic = Traffic::start(envoy.listener_port, 4, Duration::from_secs(60));
    wait_reporting(&server, "checkout", &endpoints).await;

    // Kill the server for longer than Envoy's 5 s retry; Envoy keeps serving from its endpoints.
    server.process.signal("KILL");
    assert!(server.process.wait_exit(Duration::from_secs(5)).is_none());
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.process = spawn_server(&server.config, server.directory.path());
    wait_ready(server.admin_port).await;
    wait_reporting(&server, "checkout", &endpoints).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured = measure(&server, &[&envoy], "checkout", Duration::from_secs(5)).await;
    eprintln!("{measured:#?}");
    for endpoint in &endpoints {
        let (rps, completed) = (measured.ours.rps[endpoint], measured.completed[endpoint]);
        assert!(
            close(rps, completed),
            "{endpoint} after the reconnect: ours {rps}/s, Envoy {completed}/s"
        );
    }
    traffic.stop().await;
    let first = metric_value(
        &server,
        "adaptive_eds_lrs_cluster_stats_total{result=\"first_report\"}",
    )
    .await;
    assert_eq!(
        first,
        Some(1.0),
        "the reconnected stream's first report is not used for rates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_like_sidecar_reports_under_istio_names() {
    let name = "outbound|8080||checkout.shop.svc.cluster.local";
    let backends = Backends::start(&[
        (Duration::from_millis(10), None),
        (Duration::from_millis(10), Some(2)),
    ])
    .await;
    let endpoints = backends.endpoints();
    let server = Server::start(&config(name, &endpoints)).await;
    let envoy = Envoy::start("istio-like.yaml", server.xds_port).await;
    let expected: Vec<(&str, u64)> = endpoints
        .iter()
        .map(|endpoint| (endpoint.as_str(), 100))
        .collect();
    envoy
        .wait_for_hosts(name, &expected, Duration::from_secs(20))
        .await;
    let traffic = Traffic::start(envoy.listener_port, 2, Duration::from_secs(40));
    wait_reporting(&server, name, &endpoints).await;
    // As long a measurement as the two-Envoy test's: a shorter one is at the mercy of the
    // load's wobble when the machine is busy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let measured = measure(&server, &[&envoy], name, Duration::from_secs(6)).await;
    traffic.stop().await;
    for endpoint in &endpoints {
        let (rps, completed) = (measured.ours.rps[endpoint], measured.completed[endpoint]);
        assert!(
            close(rps, completed),
            "{endpoint}: ours {rps}/s, Envoy {completed}/s"
        );
        let (errors, theirs) = (measured.ours.errors[endpoint], measured.errors[endpoint]);
        assert!(
            close(errors, theirs),
            "{endpoint}: ours {errors} errors/s, Envoy {theirs}/s"
        );
    }
    assert!(measured.errors[&endpoints[1]] > 5.0, "{measured:?}");
}

/// The override shipped for Istio proxies and the Istio-like bootstrap the tests run agree.
#[test]
fn istio_bootstrap_override_matches_the_tested_bootstrap() {
    let config_map: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(support::repo_path("deploy/istio/lrs-bootstrap.yaml"))
            .expect("read"),
    )
    .expect("YAML");
    let text = config_map["data"]["custom_bootstrap.json"]
        .as_str()
        .expect("custom_bootstrap.json");
    let overlay: serde_json::Value = serde_json::from_str(text).expect("JSON bootstrap");
    let bootstrap: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(support::repo_path("deploy/envoy/istio-like.yaml")).expect("read"),
    )
    .expect("YAML");
    assert_eq!(
        overlay["cluster_manager"]["load_stats_config"],
        bootstrap["cluster_manager"]["load_stats_config"]
    );
    let cluster = &overlay["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "adaptive_eds_lrs");
    assert!(bootstrap["static_resources"]["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .any(|tested| tested["name"] == cluster["name"]
            && tested["typed_extension_protocol_options"].is_object()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_cpu_from_the_backends_reaches_the_weighting() {
    let delay = Duration::from_millis(10);
    let backends =
        Backends::start_with_cpu(&[(delay, None, Some(0.25)), (delay, None, Some(0.75))]).await;
    let endpoints = backends.endpoints();
    let server = Server::start(&config("checkout", &endpoints)).await;
    // The cluster asks Envoy to put the backends' ORCA cpu_utilization into its load reports.
    let envoy = Envoy::start_with(
        "ads-sotw.yaml",
        server.xds_port,
        &[(
            "  - name: checkout\n    type: EDS\n",
            "  - name: checkout\n    type: EDS\n    lrs_report_endpoint_metrics: [cpu_utilization]\n",
        )],
    )
    .await;
    let expected: Vec<(&str, u64)> = endpoints
        .iter()
        .map(|endpoint| (endpoint.as_str(), 100))
        .collect();
    envoy
        .wait_for_hosts("checkout", &expected, Duration::from_secs(20))
        .await;
    let traffic = Traffic::start(envoy.listener_port, 2, Duration::from_secs(40));
    wait_reporting(&server, "checkout", &endpoints).await;
    let inspect = InspectClient::connect(server.xds_url())
        .await
        .expect("Inspect");
    let cpus = wait_for(Duration::from_secs(15), "ORCA CPU in Inspect", || {
        let mut inspect = inspect.clone();
        async move {
            let cluster = inspect
                .get_cluster(GetClusterRequest {
                    name: "checkout".into(),
                })
                .await
                .ok()?
                .into_inner();
            cluster
                .endpoints
                .iter()
                .map(|endpoint| Some((endpoint.cpu_cores?, endpoint.utilization?)))
                .collect::<Option<Vec<_>>>()
        }
    })
    .await;
    traffic.stop().await;
    // Every request carried the same value, so the mean per request is that value; the limit
    // published with it is 1.0, so utilization equals it.
    for ((cpu, utilization), expected) in cpus.iter().zip([0.25, 0.75]) {
        assert!((cpu - expected).abs() < 1e-6, "{cpus:?}");
        assert!((utilization - expected).abs() < 1e-6, "{cpus:?}");
    }
}

/// A Node like Envoy 1.40's (61 KB encoded).
fn big_node(id: &str) -> envoy_types::pb::envoy::config::core::v3::Node {
    support::envoy_lrs::envoy_node(id, "demo")
}

/// Sends raw bytes as gRPC messages and reads raw replies (to send what no client would).
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let remaining = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, remaining).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_flooding_or_broken_reporters_never_hold_up_eds() {
    use envoy_types::pb::envoy::service::{
        discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
        },
        load_stats::v3::{
            load_reporting_service_client::LoadReportingServiceClient, LoadStatsRequest,
        },
    };
    use prost::Message;
    use tokio_stream::wrappers::ReceiverStream;

    let one = vec!["10.0.0.1:8080".to_string()];
    let two = vec!["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()];
    let server = support::InProcess::start(&config("checkout", &one)).await;
    let channel = server.channel().await;
    let report = |id: &str, node: bool| LoadStatsRequest {
        node: node.then(|| big_node(id)),
        cluster_stats: vec![envoy_types::pb::envoy::config::endpoint::v3::ClusterStats {
            cluster_name: "checkout".into(),
            load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        }],
    };
    assert!(report("x", true).encoded_len() > 55_000);

    // Twenty reporters that send their first report and then never read our answers.
    let mut stalled = Vec::new();
    for index in 0..20 {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        sender
            .send(report(&format!("stalled-{index}"), true))
            .await
            .expect("queue");
        let mut client = LoadReportingServiceClient::new(channel.clone());
        let response = client
            .stream_load_stats(ReceiverStream::new(receiver))
            .await
            .expect("stream opens");
        stalled.push((sender, response));
    }
    // One that floods: 300 full-size reports as fast as it can, for at most 20 s.
    let flood = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let (sender, receiver) = tokio::sync::mpsc::channel(8);
            let mut client = LoadReportingServiceClient::new(channel);
            let response = client.stream_load_stats(ReceiverStream::new(receiver));
            let send = async {
                for index in 0..300 {
                    if sender.send(report("flood", true)).await.is_err() || index == 299 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(response, send)
            })
            .await;
        })
    };
    // One that sends garbage: refused with INVALID_ARGUMENT and counted.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let garbage = raw
        .streaming(
            tonic::Request::new(futures::stream::iter(vec![vec![0x12, 0x05, 0x0a]])),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats",
            ),
            RawCodec,
        )
        .await;
    let code = match garbage {
        Err(status) => status.code(),
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Err(status)) => status.code(),
                other => panic!("garbage was not refused: {other:?}"),
            }
        }
    };
    assert_eq!(code, tonic::Code::InvalidArgument);

    // Meanwhile EDS serves: a subscriber gets the assignment, and the change that follows.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut ads = AggregatedDiscoveryServiceClient::new(channel.clone());
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(receiver))
        .await
        .expect("ADS opens")
        .into_inner();
    sender
        .send(DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            resource_names: vec!["checkout".into()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(2), responses.message())
        .await
        .expect("EDS answers in time")
        .expect("no error")
        .expect("open");
    let changed = Instant::now();
    server.rewrite(&config("checkout", &two));
    let second = tokio::time::timeout(Duration::from_secs(3), responses.message())
        .await
        .expect("the change arrives in time")
        .expect("no error")
        .expect("open");
    assert_ne!(first.version_info, second.version_info);
    eprintln!(
        "EDS change served in {:?} with 20 stalled LRS streams and one flooding",
        changed.elapsed()
    );
    let (_, metrics) = http_get(&format!("{}/metrics", server.admin_url))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("adaptive_eds_lrs_reports_total{result=\"malformed\"} 1"),
        "{metrics}"
    );
    // Close every client connection so the server's graceful stop need not wait for them.
    drop((stalled, sender, responses, ads, raw, channel));
    flood.abort();
    let _ = flood.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_turning_to_fast_503s_loses_its_traffic_and_wins_it_back() {
    let backends = SwitchableBackends::start(3, Duration::from_millis(5)).await;
    let endpoints: Vec<String> = backends
        .ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    // Load reports only, the default capacity algorithm; `balance` spreads the healthy pods
    // evenly, so the failing pod starts with a full share to lose.
    let mut yaml = String::from(
        "tick: 1s\nmetrics:\n  load_reports: { enabled: true, interval: 1s }\nweighting: { objective: balance }\nclusters:\n  - name: checkout\n    endpoints:\n",
    );
    for port in &backends.ports {
        yaml.push_str(&format!("      - {{ address: 127.0.0.1, port: {port} }}\n"));
    }
    let server = Server::start(&yaml).await;
    let envoy = Envoy::start("ads-sotw.yaml", server.xds_port).await;
    wait_for(
        Duration::from_secs(20),
        "Envoy has the endpoints",
        || async { (envoy.hosts("checkout").await?.len() == 3).then_some(()) },
    )
    .await;
    let traffic = Traffic::start(envoy.listener_port, 4, Duration::from_secs(90));
    wait_reporting(&server, "checkout", &endpoints).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let share = |host: &str,
                 before: &HashMap<String, HashMap<String, u64>>,
                 after: &HashMap<String, HashMap<String, u64>>| {
        let delta = |host: &str| stat(after, host, "rq_total") - stat(before, host, "rq_total");
        let total: u64 = endpoints.iter().map(|host| delta(host)).sum();
        delta(host) as f64 / total.max(1) as f64
    };
    let before = host_stats(&envoy, "checkout").await.expect("stats");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = host_stats(&envoy, "checkout").await.expect("stats");
    // The pod with the largest share fails: it has the most to lose (LRS-only weights on
    // identical pods are not even, so a fixed pod may start with little).
    let index = (0..endpoints.len())
        .max_by(|a, b| {
            share(&endpoints[*a], &before, &after).total_cmp(&share(
                &endpoints[*b],
                &before,
                &after,
            ))
        })
        .expect("endpoints");
    let failing = &endpoints[index];
    let healthy_share = share(failing, &before, &after);
    eprintln!(
        "healthy: weights {:?}, share of {failing} {healthy_share:.3}",
        envoy.hosts("checkout").await
    );
    assert!(healthy_share > 0.3, "{healthy_share}");
    backends.failing[index].store(true, Ordering::Relaxed);
    let switched = Instant::now();
    // Its weight falls once two reports show the errors and a tick has run.
    let weights = wait_for(
        Duration::from_secs(10),
        "the failing pod's weight falls",
        || async {
            let hosts = envoy.hosts("checkout").await?;
            let weight = |host: &str| {
                hosts
                    .iter()
                    .find(|(name, _)| name == host)
                    .map(|(_, weight)| *weight)
            };
            let others = endpoints
                .iter()
                .filter(|host| *host != failing)
                .map(|host| weight(host))
                .min()??;
            (weight(failing)? * 20 <= others).then_some(hosts)
        },
    )
    .await;
    let fell_after = switched.elapsed();
    let before = host_stats(&envoy, "checkout").await.expect("stats");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = host_stats(&envoy, "checkout").await.expect("stats");
    let held_share = share(failing, &before, &after);
    eprintln!(
        "weights {weights:?} {fell_after:?} after the switch; its share then {held_share:.4}"
    );
    assert!(
        held_share < 0.05,
        "the failing pod still takes {held_share:.3} of the requests"
    );

    // Recovered, it is seen through its probe and climbs back.
    backends.failing[index].store(false, Ordering::Relaxed);
    let recovered = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the recovered pod's weight climbs back",
        || async {
            let hosts = envoy.hosts("checkout").await?;
            let weight = |host: &str| {
                hosts
                    .iter()
                    .find(|(name, _)| name == host)
                    .map(|(_, weight)| *weight)
            };
            let others = endpoints
                .iter()
                .filter(|host| *host != failing)
                .map(|host| weight(host))
                .min()??;
            (weight(failing)? * 2 >= others).then_some(())
        },
    )
    .await;
    eprintln!("back within {:?} of recovering", recovered.elapsed());
    traffic.stop().await;
}
