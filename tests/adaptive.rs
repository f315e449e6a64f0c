//! End to end with real metric stores: CPU flows from test backends through VictoriaMetrics (PromQL
//! pull) or vmagent (remote-write) into our weights, and a real Envoy ends up with weights ordered
//! inversely to cost per request. Killing VictoriaMetrics holds, then falls back, then recovers.

mod support;

use std::time::Duration;

use adaptive_eds::inspect::pb::{inspect_client::InspectClient, GetClusterRequest};
use support::{start_vmagent, wait_for, Envoy, FakeBackends, FakePod, Server, VictoriaMetrics};

/// Same request rate, different CPU: cost per request 2, 5 and 15 ms.
fn pods() -> Vec<FakePod> {
    vec![
        FakePod {
            pod: "pod-a",
            cores: 0.2,
            rps: 100.0,
        },
        FakePod {
            pod: "pod-b",
            cores: 0.5,
            rps: 100.0,
        },
        FakePod {
            pod: "pod-c",
            cores: 1.5,
            rps: 100.0,
        },
    ]
}

fn cluster_yaml(backends: &FakeBackends) -> String {
    let mut yaml = String::from(
        "clusters:\n  - name: checkout\n    namespace: shop\n    container: web\n    endpoints:\n",
    );
    for (address, pod) in backends.addresses.iter().zip(["pod-a", "pod-b", "pod-c"]) {
        yaml.push_str(&format!(
            "      - {{ address: 127.0.0.1, port: {}, pod: {pod} }}\n",
            address.port()
        ));
    }
    yaml
}

/// Envoy's checkout weights in pod order (a, b, c).
async fn envoy_weights(envoy: &Envoy, backends: &FakeBackends) -> Option<Vec<u64>> {
    let hosts = envoy.hosts("checkout").await?;
    backends
        .addresses
        .iter()
        .map(|address| {
            hosts
                .iter()
                .find(|(host, _)| host == &format!("127.0.0.1:{}", address.port()))
                .map(|(_, weight)| *weight)
        })
        .collect()
}

async fn wait_for_weights(
    envoy: &Envoy,
    backends: &FakeBackends,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    wait_for(timeout, what, || async {
        envoy_weights(envoy, backends)
            .await
            .filter(|weights| accept(weights))
    })
    .await
}

fn ordered(weights: &[u64]) -> bool {
    weights.windows(2).all(|pair| pair[0] > pair[1])
}

fn equal(weights: &[u64]) -> bool {
    weights.windows(2).all(|pair| pair[0] == pair[1])
}

async fn cluster(server: &Server) -> adaptive_eds::inspect::pb::Cluster {
    let mut inspect = InspectClient::connect(server.xds_url())
        .await
        .expect("connect Inspect");
    inspect
        .get_cluster(GetClusterRequest {
            name: "checkout".into(),
        })
        .await
        .expect("GetCluster")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_cpu_orders_envoy_weights_and_survives_a_metrics_outage() {
    let backends = FakeBackends::start("shop", "web", pods()).await;
    let mut victoria = VictoriaMetrics::start(&backends.addresses).await;
    let config = format!(
        r#"tick: 1s
{metrics}weighting:
  algorithm: capacity
  objective: balance
  stale_after: 4s
  fallback_after: 10s
{clusters}"#,
        metrics = victoria.prometheus_yaml(""),
        clusters = cluster_yaml(&backends)
    );
    let mut server = Server::start(&config).await;
    let envoy = Envoy::start("ads-sotw.yaml", server.xds_port).await;

    let weights = wait_for_weights(
        &envoy,
        &backends,
        "weights ordered inversely to CPU",
        Duration::from_secs(40),
        ordered,
    )
    .await;
    eprintln!("fresh weights (a, b, c): {weights:?}");
    let explained = cluster(&server).await;
    assert_eq!(explained.mode, "fresh");
    for (endpoint, expected) in explained.endpoints.iter().zip([0.2, 0.5, 1.5]) {
        let cpu = endpoint.cpu_cores.expect("cpu explained");
        assert!(
            (cpu - expected).abs() < expected * 0.25,
            "{} cpu {cpu}, expected about {expected}",
            endpoint.pod
        );
        assert!(
            endpoint
                .requests_per_second
                .is_some_and(|rps| (rps - 100.0).abs() < 25.0),
            "{endpoint:?}"
        );
        assert!(
            endpoint.sample_age_seconds.is_some_and(|age| age < 4.0),
            "{endpoint:?}"
        );
        assert_eq!(endpoint.source, "fresh");
        // No 5xx series at all: 0 errors/s for each pod that has a request rate.
        assert_eq!(endpoint.errors_per_second, Some(0.0), "{endpoint:?}");
    }

    // Metrics store down: weights are held while samples are merely stale ...
    victoria.stop();
    let holding = wait_for(Duration::from_secs(15), "holding mode", || async {
        let explained = cluster(&server).await;
        (explained.mode == "holding").then_some(explained)
    })
    .await;
    let held: Vec<u32> = holding
        .endpoints
        .iter()
        .map(|endpoint| endpoint.weight)
        .collect();
    assert!(
        ordered(
            &held
                .iter()
                .map(|weight| u64::from(*weight))
                .collect::<Vec<_>>()
        ),
        "held {held:?}"
    );
    // ... then fall back to equal weights ...
    let fallback = wait_for_weights(
        &envoy,
        &backends,
        "equal weights after fallback_after",
        Duration::from_secs(20),
        equal,
    )
    .await;
    eprintln!("fallback weights: {fallback:?}");
    assert_eq!(cluster(&server).await.mode, "fallback");
    // ... and recover by themselves when it is back.
    victoria.restart().await;
    let recovered = wait_for_weights(
        &envoy,
        &backends,
        "ordered weights after recovery",
        Duration::from_secs(40),
        ordered,
    )
    .await;
    eprintln!("recovered weights: {recovered:?}");
    server.process.assert_running();
    let (_, metrics) = support::http_get(&server.admin_url("/metrics"))
        .await
        .expect("metrics");
    assert!(metrics.contains("adaptive_eds_metric_queries_total{cluster=\"checkout\",signal=\"cpu\",result=\"error\"}"), "query errors counted");
    assert!(
        metrics.contains("adaptive_eds_cluster_mode{cluster=\"checkout\",mode=\"fresh\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("adaptive_eds_endpoint_cpu_cores{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_written_cpu_from_vmagent_orders_envoy_weights() {
    let backends = FakeBackends::start("shop", "web", pods()).await;
    let config = format!(
        r#"tick: 1s
metrics:
  remote_write:
    enabled: true
    rps_metric: http_requests_total
    # 0 errors/s for every pod: the cheapest pod is believed, not capped.
    error_metric: http_request_errors_total
    cpu_limit_metric: kube_pod_container_resource_limits
    rate_window: 5s
    match_labels: {{ namespace: shop }}
weighting:
  algorithm: capacity
  objective: balance
{clusters}"#,
        clusters = cluster_yaml(&backends)
    );
    let server = Server::start(&config).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let _vmagent = start_vmagent(
        directory.path(),
        &backends.addresses,
        &server.admin_url("/api/v1/write"),
    );
    let envoy = Envoy::start("ads-sotw.yaml", server.xds_port).await;
    let weights = wait_for_weights(
        &envoy,
        &backends,
        "weights ordered inversely to CPU",
        Duration::from_secs(40),
        ordered,
    )
    .await;
    eprintln!("remote-write weights (a, b, c): {weights:?}");
    let explained = cluster(&server).await;
    assert_eq!(explained.mode, "fresh");
    let cpu = explained.endpoints[2].cpu_cores.expect("cpu of pod-c");
    assert!((cpu - 1.5).abs() < 0.4, "pod-c cpu {cpu}");
    // The limit gauge (2 cores, its `resource="cpu"` row) divides the CPU: pod-c uses 1.5 of 2.
    let utilization = explained.endpoints[2]
        .utilization
        .expect("utilization of pod-c");
    assert!(
        (utilization - 0.75).abs() < 0.2,
        "pod-c utilization {utilization}"
    );
    // The request counter has no `container` label: it is matched by namespace and pod only.
    for endpoint in &explained.endpoints {
        assert!(
            endpoint
                .requests_per_second
                .is_some_and(|rps| (rps - 100.0).abs() < 25.0),
            "{endpoint:?}"
        );
        // The error counter stays at 0.
        assert_eq!(endpoint.errors_per_second, Some(0.0), "{endpoint:?}");
    }
    let (_, metrics) = support::http_get(&server.admin_url("/metrics"))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("adaptive_eds_remote_write_samples_total{result=\"accepted\"}"),
        "{metrics}"
    );
}

/// pod-a answers 90 of its 100 requests per second with a fast 503 (and so uses the least CPU);
/// pod-b and pod-c never fail, so their request counters have no `code="503"` series at all.
fn failing_pods() -> Vec<(FakePod, f64)> {
    let mut pods = pods();
    pods[0].cores = 0.05;
    pods.into_iter().zip([90.0, 0.0, 0.0]).collect()
}

/// Waits (40 s at most) until Inspect shows errors per second for every endpoint and pod-a held
/// below the others (Inspect shows the samples as they are now and the weights of the last
/// tick, which may not have seen them yet), then checks the figures: about 90/s (ratio 0.9)
/// for pod-a, exactly 0 for the pods without an error series.
async fn assert_errors_arrive(server: &Server) -> adaptive_eds::inspect::pb::Cluster {
    let explained = wait_for(
        Duration::from_secs(40),
        "errors per second of every pod in Inspect, and pod-a held",
        || async {
            let explained = cluster(server).await;
            let all = explained.endpoints.len() == 3
                && explained.endpoints.iter().all(|endpoint| {
                    endpoint.errors_per_second.is_some() && endpoint.requests_per_second.is_some()
                });
            // pod-a first in the list, held below the others once a tick has seen its errors.
            let held = explained.endpoints.first().is_some_and(|failing| {
                explained.endpoints[1..]
                    .iter()
                    .all(|healthy| failing.weight < healthy.weight)
            });
            (all && held).then_some(explained)
        },
    )
    .await;
    for endpoint in &explained.endpoints {
        eprintln!(
            "{}: weight {}, rps {:?}, errors/s {:?}, ratio {:?}, in flight {:?}, {}",
            endpoint.pod,
            endpoint.weight,
            endpoint.requests_per_second,
            endpoint.errors_per_second,
            endpoint.error_ratio,
            endpoint.requests_in_flight,
            endpoint.reason
        );
    }
    let failing = &explained.endpoints[0];
    assert_eq!(failing.pod, "pod-a");
    let errors = failing.errors_per_second.expect("errors of pod-a");
    assert!((errors - 90.0).abs() < 20.0, "pod-a errors/s {errors}");
    let ratio = failing.error_ratio.expect("error ratio of pod-a");
    assert!((ratio - 0.9).abs() < 0.1, "pod-a error ratio {ratio}");
    for healthy in &explained.endpoints[1..] {
        assert_eq!(healthy.errors_per_second, Some(0.0), "{healthy:?}");
        assert_eq!(healthy.error_ratio, Some(0.0), "{healthy:?}");
        // The cheapest pod by CPU does not win: its errors are seen.
        assert!(failing.weight < healthy.weight, "{explained:?}");
    }
    explained
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_error_rates_reach_the_engine_per_pod() {
    let backends = FakeBackends::start_failing("shop", "web", failing_pods()).await;
    let victoria = VictoriaMetrics::start(&backends.addresses).await;
    let config = format!(
        r#"tick: 1s
{metrics}weighting:
  algorithm: capacity
  objective: latency
{clusters}"#,
        metrics = victoria.prometheus_yaml("    in_flight_query: 'sum(http_requests_in_flight{namespace=\"${namespace}\"}) by (pod)'\n"),
        clusters = cluster_yaml(&backends)
    );
    let mut server = Server::start(&config).await;
    let explained = assert_errors_arrive(&server).await;
    // The in-flight gauge reads rps / 100.
    for endpoint in &explained.endpoints {
        let in_flight = endpoint.requests_in_flight.expect("in flight");
        assert!((in_flight - 1.0).abs() < 1e-6, "{endpoint:?}");
    }
    server.process.assert_running();
    let (_, metrics) = support::http_get(&server.admin_url("/metrics"))
        .await
        .expect("metrics");
    for signal in ["errors", "in_flight"] {
        let line = format!("adaptive_eds_metric_queries_total{{cluster=\"checkout\",signal=\"{signal}\",result=\"ok\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_written_status_codes_count_as_errors() {
    let backends = FakeBackends::start_failing("shop", "web", failing_pods()).await;
    let config = format!(
        r#"tick: 1s
metrics:
  remote_write:
    enabled: true
    rps_metric: http_requests_total
    error_labels: {{ code: "5.." }}
    rate_window: 5s
    match_labels: {{ namespace: shop }}
weighting:
  algorithm: capacity
  objective: latency
{clusters}"#,
        clusters = cluster_yaml(&backends)
    );
    let mut server = Server::start(&config).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let _vmagent = start_vmagent(
        directory.path(),
        &backends.addresses,
        &server.admin_url("/api/v1/write"),
    );
    assert_errors_arrive(&server).await;
    server.process.assert_running();
}

/// With a 60 s tick, a pod that begins to fail between two ticks is held within seconds of the
/// scrape that shows it, not at the next tick: between ticks the pull reads the request and
/// error rates every second (`failure_watch`), and the engine recomputes when they show news
/// of a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failing_between_ticks_is_held_before_the_next_tick() {
    let backends = FakeBackends::start("shop", "web", pods()).await;
    let victoria = VictoriaMetrics::start(&backends.addresses).await;
    let config = format!(
        r#"tick: 60s
{metrics}weighting:
  algorithm: capacity
  objective: latency
{clusters}"#,
        metrics = victoria.prometheus_yaml(""),
        clusters = cluster_yaml(&backends)
    );
    let mut server = Server::start(&config).await;
    // Measured (the new pods' eager pulls), pod-a, the cheapest, first by weight.
    wait_for(Duration::from_secs(40), "every pod measured", || async {
        let explained = cluster(&server).await;
        let measured = explained.endpoints.len() == 3
            && explained
                .endpoints
                .iter()
                .all(|endpoint| endpoint.source == "fresh");
        (measured && explained.endpoints[0].weight > explained.endpoints[2].weight).then_some(())
    })
    .await;
    // The pull ticks 100 ms after each minute of Unix time: fail the pod at least 30 s before
    // the next one, so that a hold within 20 s cannot be that tick's. (VictoriaMetrics shows a
    // new series, the pod's first `code="503"`, 2-8 s after its first scrape.)
    let seconds_in_minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() % 60)
    };
    wait_for(
        Duration::from_secs(60),
        "a second 3-29 of a minute",
        || async {
            let second = seconds_in_minute();
            if (3..30).contains(&second) {
                Some(())
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        },
    )
    .await;
    let minute = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() / 60)
    };
    let failed_at = std::time::SystemTime::now();
    backends.set_errors(0, 90.0);
    let explained = wait_for(Duration::from_secs(20), "pod-a held", || async {
        let explained = cluster(&server).await;
        (explained.endpoints[0].source == "failing").then_some(explained)
    })
    .await;
    let held_at = std::time::SystemTime::now();
    eprintln!(
        "held {:?} after the failure: {:?}",
        held_at.duration_since(failed_at),
        explained.endpoints[0]
    );
    assert_eq!(
        minute(held_at),
        minute(failed_at),
        "held before the next tick"
    );
    for healthy in &explained.endpoints[1..] {
        assert!(
            explained.endpoints[0].weight < healthy.weight,
            "{explained:?}"
        );
    }
    server.process.assert_running();
}
