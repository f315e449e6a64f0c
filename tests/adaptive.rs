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
metrics:
  prometheus:
    url: {url}
    cpu_query: 'sum(rate(container_cpu_usage_seconds_total{{namespace="${{namespace}}",container="${{container}}"}}[5s])) by (pod)'
    rps_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}"}}[5s])) by (pod)'
    timeout: 1s
weighting:
  algorithm: capacity
  objective: balance
  stale_after: 4s
  fallback_after: 10s
{clusters}"#,
        url = victoria.url(),
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
    }
    let (_, metrics) = support::http_get(&server.admin_url("/metrics"))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("adaptive_eds_remote_write_samples_total{result=\"accepted\"}"),
        "{metrics}"
    );
}
