//! The Kubernetes source against recorded API-server responses: the real `kube` client and
//! watcher follow lists, watch events, a deleted slice and a `410 Gone`, and a real Envoy set up
//! the way Istio's EnvoyFilter leaves a cluster gets the discovered endpoints and weights.
//!
//! The fake API server (tests/support/fake_kube_api.rs) is the only mock: no API server can run
//! here, and what matters is how the source reacts to the API's answers.

mod support;

use std::time::Duration;

use adaptive_eds::discovery::{
    kubernetes::KubernetesSource, ClusterUpdate, Endpoint, HealthStatus,
};
use adaptive_eds::inspect::pb::{
    inspect_client::InspectClient, GetClusterRequest, ListClustersRequest,
};
use serde_json::json;
use support::fake_kube_api::{self as api, FakeKubeApi, Frame, SliceEndpoint, SERVICES, SLICES};
use support::{Envoy, Server};
use tokio::sync::mpsc;

const ISTIO_CHECKOUT: &str = "outbound|8080||checkout.shop.svc.cluster.local";
const PLAIN_CHECKOUT: &str = "checkout.shop:8080";

fn settings(yaml: &str) -> adaptive_eds::config::kubernetes::KubernetesSettings {
    adaptive_eds::config::parse(yaml)
        .expect("valid config")
        .kubernetes
        .expect("kubernetes enabled")
}

fn client(api: &FakeKubeApi) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("fake API URL"));
    kube::Client::try_from(config).expect("kube client")
}

async fn next_batch(
    updates: &mut mpsc::Receiver<Vec<ClusterUpdate>>,
    what: &str,
) -> Vec<ClusterUpdate> {
    tokio::time::timeout(Duration::from_secs(15), updates.recv())
        .await
        .unwrap_or_else(|_| panic!("no update within 15 s: {what}"))
        .expect("source still running")
}

/// `(address, health)` of each endpoint of `cluster` in a batch that resets it.
fn endpoints_of<'a>(batch: &'a [ClusterUpdate], cluster: &str) -> &'a [Endpoint] {
    batch
        .iter()
        .find_map(|update| match update {
            ClusterUpdate::Reset {
                cluster: name,
                endpoints,
            } if name == cluster => Some(endpoints.as_slice()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{cluster} not reset in {batch:#?}"))
}

fn summary(endpoints: &[Endpoint]) -> Vec<(String, HealthStatus)> {
    endpoints
        .iter()
        .map(|endpoint| {
            (
                format!("{}:{}", endpoint.address, endpoint.port),
                endpoint.health,
            )
        })
        .collect()
}

fn names(batch: &[ClusterUpdate]) -> Vec<String> {
    let mut names: Vec<String> = batch
        .iter()
        .map(|update| match update {
            ClusterUpdate::Reset { cluster, .. } => format!("reset {cluster}"),
            ClusterUpdate::Removed { cluster } => format!("removed {cluster}"),
        })
        .collect();
    names.sort();
    names
}

fn checkout_slice(name: &str, endpoints: &[SliceEndpoint<'_>], version: &str) -> serde_json::Value {
    api::slice("shop", name, "checkout", 9090, endpoints, version)
}

fn initial_lists(api: &FakeKubeApi) {
    api.push_list(
        SERVICES,
        200,
        api::list(
            "ServiceList",
            "v1",
            "100",
            vec![
                api::service("shop", "checkout", 8080, json!({ "app": "checkout" }), "90"),
                api::service(
                    "shop",
                    "cart",
                    8080,
                    json!({ "adaptive-eds.io/enabled": "true" }),
                    "91",
                ),
                api::service("shop", "search", 8080, json!({ "app": "search" }), "92"),
            ],
        ),
    );
    api.push_list(
        SLICES,
        200,
        api::list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            "100",
            vec![
                checkout_slice(
                    "checkout-abc12",
                    &[
                        api::ready("10.0.0.1", "checkout-7d9f-a", "z1"),
                        api::ready("10.0.0.2", "checkout-7d9f-b", "z2"),
                    ],
                    "95",
                ),
                api::slice(
                    "shop",
                    "cart-xyz34",
                    "cart",
                    9090,
                    &[api::ready("10.0.1.1", "cart-5c-a", "z1")],
                    "96",
                ),
                api::slice(
                    "shop",
                    "search-q1w2e",
                    "search",
                    9090,
                    &[api::ready("10.0.2.1", "search-a", "z1")],
                    "97",
                ),
            ],
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_follows_lists_watch_events_deletes_and_410_gone() {
    let api = FakeKubeApi::start().await;
    initial_lists(&api);
    let source = KubernetesSource::with_client(
        settings(
            "kubernetes:\n  enabled: true\n  services: [{ namespace: shop, name: checkout }]\n  selector: { label: adaptive-eds.io/enabled, value: \"true\" }\n  naming: both\n",
        ),
        client(&api),
    );
    let (sender, mut updates) = mpsc::channel(16);
    let task = tokio::spawn(source.run(sender));
    use HealthStatus::*;

    // 1. Both lists done: every selected service port, under both names; `search` is not selected.
    let batch = next_batch(&mut updates, "initial lists").await;
    assert_eq!(
        names(&batch),
        vec![
            "reset cart.shop:8080",
            "reset checkout.shop:8080",
            "reset outbound|8080||cart.shop.svc.cluster.local",
            "reset outbound|8080||checkout.shop.svc.cluster.local",
        ]
    );
    let checkout = endpoints_of(&batch, ISTIO_CHECKOUT);
    assert_eq!(
        summary(checkout),
        vec![
            ("10.0.0.1:9090".into(), Healthy),
            ("10.0.0.2:9090".into(), Healthy)
        ]
    );
    assert_eq!(
        checkout[0].pod.as_deref(),
        Some("checkout-7d9f-a"),
        "the pod from targetRef"
    );
    assert_eq!(checkout[1].locality.zone, "z2");
    assert_eq!(endpoints_of(&batch, PLAIN_CHECKOUT), checkout);

    // 2. A pod becomes not ready, then terminates while still serving.
    let pod_b = |ready, serving, terminating| SliceEndpoint {
        address: "10.0.0.2",
        pod: "checkout-7d9f-b",
        zone: "z2",
        ready,
        serving,
        terminating,
    };
    let pod_a = api::ready("10.0.0.1", "checkout-7d9f-a", "z1");
    api.push_frame(
        SLICES,
        Frame::Event(
            "MODIFIED",
            checkout_slice(
                "checkout-abc12",
                &[
                    api::ready("10.0.0.1", "checkout-7d9f-a", "z1"),
                    pod_b(false, false, false),
                ],
                "101",
            ),
        ),
    );
    let batch = next_batch(&mut updates, "pod b not ready").await;
    assert_eq!(
        names(&batch),
        vec![
            "reset checkout.shop:8080",
            "reset outbound|8080||checkout.shop.svc.cluster.local"
        ],
        "only checkout changed"
    );
    assert_eq!(
        summary(endpoints_of(&batch, ISTIO_CHECKOUT)),
        vec![
            ("10.0.0.1:9090".into(), Healthy),
            ("10.0.0.2:9090".into(), Unhealthy)
        ]
    );
    api.push_frame(
        SLICES,
        Frame::Event(
            "MODIFIED",
            checkout_slice(
                "checkout-abc12",
                &[
                    api::ready("10.0.0.1", "checkout-7d9f-a", "z1"),
                    pod_b(false, true, true),
                ],
                "102",
            ),
        ),
    );
    let batch = next_batch(&mut updates, "pod b draining").await;
    assert_eq!(
        summary(endpoints_of(&batch, ISTIO_CHECKOUT))[1],
        ("10.0.0.2:9090".into(), Draining)
    );

    // 3. A second slice appears, then is deleted.
    api.push_frame(
        SLICES,
        Frame::Event(
            "ADDED",
            checkout_slice(
                "checkout-def56",
                &[api::ready("10.0.0.3", "checkout-7d9f-c", "z1")],
                "103",
            ),
        ),
    );
    let batch = next_batch(&mut updates, "second slice added").await;
    assert_eq!(endpoints_of(&batch, ISTIO_CHECKOUT).len(), 3);
    api.push_frame(
        SLICES,
        Frame::Event(
            "DELETED",
            checkout_slice(
                "checkout-def56",
                &[api::ready("10.0.0.3", "checkout-7d9f-c", "z1")],
                "104",
            ),
        ),
    );
    let batch = next_batch(&mut updates, "second slice deleted").await;
    assert_eq!(
        summary(endpoints_of(&batch, ISTIO_CHECKOUT)),
        vec![
            ("10.0.0.1:9090".into(), Healthy),
            ("10.0.0.2:9090".into(), Draining)
        ]
    );

    // 4. 410 Gone: the watcher re-lists. The first re-list fails (500): nothing is sent, the
    //    last endpoints stay. The next re-list replaces the whole set at once.
    let relisted = api::list(
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        "2000",
        vec![
            checkout_slice("checkout-abc12", &[pod_a, pod_b(true, true, false)], "1990"),
            checkout_slice(
                "checkout-ghi78",
                &[api::ready("10.0.0.4", "checkout-7d9f-d", "z2")],
                "1991",
            ),
            api::slice(
                "shop",
                "cart-xyz34",
                "cart",
                9090,
                &[api::ready("10.0.1.1", "cart-5c-a", "z1")],
                "96",
            ),
        ],
    );
    api.replace_lists(
        SLICES,
        vec![
            (
                500,
                api::status_body(500, "InternalError", "etcd leader changed"),
            ),
            (200, relisted),
        ],
    );
    let lists_before = api
        .requests()
        .iter()
        .filter(|request| request.starts_with(SLICES) && !request.contains("watch=true"))
        .count();
    api.push_frame(SLICES, Frame::Gone);
    let batch = next_batch(&mut updates, "re-list after 410 Gone").await;
    assert_eq!(
        names(&batch),
        vec![
            "reset checkout.shop:8080",
            "reset outbound|8080||checkout.shop.svc.cluster.local"
        ],
        "cart did not change: not resent"
    );
    assert_eq!(
        summary(endpoints_of(&batch, ISTIO_CHECKOUT)),
        vec![
            ("10.0.0.1:9090".into(), Healthy),
            ("10.0.0.2:9090".into(), Healthy),
            ("10.0.0.4:9090".into(), Healthy)
        ],
        "the first update after the error is the complete new set (never an empty cluster)"
    );
    let lists_after = api
        .requests()
        .iter()
        .filter(|request| request.starts_with(SLICES) && !request.contains("watch=true"))
        .count();
    assert_eq!(
        lists_after - lists_before,
        2,
        "one failed re-list, one good: {:#?}",
        api.requests()
    );

    // 5. The Service is deleted: both of its clusters are removed.
    api.push_frame(
        SERVICES,
        Frame::Event(
            "DELETED",
            api::service(
                "shop",
                "checkout",
                8080,
                json!({ "app": "checkout" }),
                "2001",
            ),
        ),
    );
    let batch = next_batch(&mut updates, "service deleted").await;
    assert_eq!(
        names(&batch),
        vec![
            "removed checkout.shop:8080",
            "removed outbound|8080||checkout.shop.svc.cluster.local"
        ]
    );

    // The source stops when nobody listens.
    drop(updates);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the source stops within 5 s once its channel is closed")
        .expect("source task");
}

/// The kubernetes section of a server config that reads the fake API through a kubeconfig.
fn server_config(kubeconfig: &std::path::Path) -> String {
    format!(
        "kubernetes:\n  enabled: true\n  kubeconfig: \"{}\"\n  services: [{{ namespace: shop, name: checkout }}]\n  naming: istio\n",
        kubeconfig.display()
    )
}

/// Two slices of `checkout` with different target ports, so both endpoints live on 127.0.0.1.
fn loopback_lists(api: &FakeKubeApi) {
    api.push_list(
        SERVICES,
        200,
        api::list(
            "ServiceList",
            "v1",
            "100",
            vec![api::service("shop", "checkout", 8080, json!({}), "90")],
        ),
    );
    api.push_list(
        SLICES,
        200,
        api::list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            "100",
            vec![
                api::slice(
                    "shop",
                    "checkout-v1aaa",
                    "checkout",
                    9001,
                    &[api::ready("127.0.0.1", "checkout-v1-a", "z1")],
                    "95",
                ),
                api::slice(
                    "shop",
                    "checkout-v2bbb",
                    "checkout",
                    9002,
                    &[api::ready("127.0.0.1", "checkout-v2-a", "z2")],
                    "96",
                ),
            ],
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_set_up_like_istio_gets_the_discovered_endpoints() {
    let api = FakeKubeApi::start().await;
    loopback_lists(&api);
    let directory = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(directory.path());
    let server = Server::start(&server_config(&kubeconfig)).await;
    let envoy = Envoy::start("istio-like.yaml", server.xds_port).await;
    envoy
        .wait_for_hosts(
            ISTIO_CHECKOUT,
            &[("127.0.0.1:9001", 100), ("127.0.0.1:9002", 100)],
            Duration::from_secs(20),
        )
        .await;

    // A slice is deleted (a rollout finished): Envoy drops its endpoint.
    api.push_frame(
        SLICES,
        Frame::Event(
            "DELETED",
            api::slice(
                "shop",
                "checkout-v1aaa",
                "checkout",
                9001,
                &[api::ready("127.0.0.1", "checkout-v1-a", "z1")],
                "101",
            ),
        ),
    );
    envoy
        .wait_for_hosts(
            ISTIO_CHECKOUT,
            &[("127.0.0.1:9002", 100)],
            Duration::from_secs(10),
        )
        .await;
    let dumped = envoy
        .dumped_weights(ISTIO_CHECKOUT)
        .await
        .expect("cluster in config_dump");
    assert_eq!(
        dumped,
        vec![("127.0.0.1:9002".to_string(), 100)],
        "Envoy ACKed what we sent"
    );
    let log = server.process.log();
    assert!(!log.contains("NACK"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fed_the_same_api_serve_the_same_versions_and_weights() {
    let mut replicas = Vec::new();
    let directory = tempfile::tempdir().expect("tempdir");
    for index in 0..2 {
        let api = FakeKubeApi::start().await;
        loopback_lists(&api);
        let subdirectory = directory.path().join(format!("replica-{index}"));
        std::fs::create_dir(&subdirectory).expect("mkdir");
        let kubeconfig = api.write_kubeconfig(&subdirectory);
        let server = Server::start(&server_config(&kubeconfig)).await;
        replicas.push((api, server));
    }
    let mut views = Vec::new();
    for (_, server) in &replicas {
        let mut inspect = InspectClient::connect(server.xds_url())
            .await
            .expect("connect Inspect");
        let listed = support::wait_for(
            Duration::from_secs(15),
            "the discovered cluster in ListClusters",
            || {
                let mut inspect = inspect.clone();
                async move {
                    let listed = inspect
                        .list_clusters(ListClustersRequest {})
                        .await
                        .ok()?
                        .into_inner();
                    listed
                        .clusters
                        .iter()
                        .any(|cluster| {
                            cluster.name == ISTIO_CHECKOUT && cluster.endpoint_count == 2
                        })
                        .then_some(listed)
                }
            },
        )
        .await;
        let cluster = inspect
            .get_cluster(GetClusterRequest {
                name: ISTIO_CHECKOUT.into(),
            })
            .await
            .expect("GetCluster")
            .into_inner();
        let weights: Vec<(String, u32, u32, String)> = cluster
            .endpoints
            .iter()
            .map(|endpoint| {
                (
                    endpoint.address.clone(),
                    endpoint.port,
                    endpoint.weight,
                    endpoint.pod.clone(),
                )
            })
            .collect();
        views.push((listed.snapshot_version, cluster.version, weights));
    }
    assert!(!views[0].0.is_empty() && !views[0].1.is_empty());
    assert_eq!(
        views[0], views[1],
        "two replicas, same input: same snapshot version, cluster version, weights"
    );
    eprintln!(
        "replicas agree: snapshot {} cluster {} endpoints {:?}",
        views[0].0, views[0].1, views[0].2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_cluster_gets_cpu_driven_weights_from_victoriametrics() {
    use support::{FakeBackends, FakePod, VictoriaMetrics};
    // Same request rate, different CPU: pod-a is the cheapest per request, pod-c the dearest.
    let pods = [("pod-a", 0.2), ("pod-b", 0.5), ("pod-c", 1.5)];
    let backends = FakeBackends::start(
        "shop",
        "checkout",
        pods.iter()
            .map(|(pod, cores)| FakePod {
                pod,
                cores: *cores,
                rps: 100.0,
            })
            .collect(),
    )
    .await;
    let victoria = VictoriaMetrics::start(&backends.addresses).await;
    let api = FakeKubeApi::start().await;
    api.push_list(
        SERVICES,
        200,
        api::list(
            "ServiceList",
            "v1",
            "100",
            vec![api::service("shop", "checkout", 8080, json!({}), "90")],
        ),
    );
    let slices = backends
        .addresses
        .iter()
        .zip(pods)
        .map(|(address, (pod, _))| {
            api::slice(
                "shop",
                &format!("checkout-{pod}"),
                "checkout",
                address.port(),
                &[api::ready("127.0.0.1", pod, "z1")],
                "95",
            )
        })
        .collect();
    api.push_list(
        SLICES,
        200,
        api::list("EndpointSliceList", "discovery.k8s.io/v1", "100", slices),
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(directory.path());
    // No clusters in the file: ${namespace} and ${container} come from the Service (the
    // container defaults to the Service name, `checkout`).
    let config = format!(
        r#"tick: 1s
{metrics}weighting:
  algorithm: capacity
  objective: balance
{kubernetes}"#,
        metrics = victoria.prometheus_yaml(""),
        kubernetes = server_config(&kubeconfig)
    );
    let server = Server::start(&config).await;
    let mut inspect = InspectClient::connect(server.xds_url())
        .await
        .expect("connect Inspect");
    let weights = support::wait_for(
        Duration::from_secs(60),
        "CPU-ordered weights on the discovered cluster",
        || {
            let mut inspect = inspect.clone();
            async move {
                let cluster = inspect
                    .get_cluster(GetClusterRequest {
                        name: ISTIO_CHECKOUT.into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                let weight = |pod: &str| {
                    cluster
                        .endpoints
                        .iter()
                        .find(|endpoint| endpoint.pod == pod)
                        .map(|endpoint| endpoint.weight)
                };
                let weights = [weight("pod-a")?, weight("pod-b")?, weight("pod-c")?];
                (weights[0] > weights[1] && weights[1] > weights[2])
                    .then_some((weights, cluster.mode))
            }
        },
    )
    .await;
    eprintln!(
        "discovered cluster weights (pod-a, pod-b, pod-c): {:?}, mode {}",
        weights.0, weights.1
    );
    let _ = inspect
        .list_clusters(ListClustersRequest {})
        .await
        .expect("ListClusters");
}
