//! End to end with a real Envoy 1.40 for each shipped bootstrap: Envoy's admin shows exactly the
//! configured endpoints and weights, follows config edits, and survives an invalid edit.

mod support;

use std::time::Duration;

use support::{http_get, wait_for, Envoy, Server};

const CLUSTERS: &str = r#"
clusters:
  - name: checkout
    endpoints:
      - { address: 127.0.0.1, port: 9001, weight: 300, pod: checkout-a, zone: z1 }
      - { address: 127.0.0.1, port: 9002 }
  - name: payments
    endpoints:
      - { address: 127.0.0.1, port: 9101, weight: 7 }
"#;

const CHANGED: &str = r#"
clusters:
  - name: checkout
    endpoints:
      - { address: 127.0.0.1, port: 9001, weight: 50, pod: checkout-a, zone: z1 }
      - { address: 127.0.0.1, port: 9002, weight: 950 }
      - { address: 127.0.0.1, port: 9003, weight: 1 }
  - name: payments
    endpoints:
      - { address: 127.0.0.1, port: 9101, weight: 7 }
"#;

/// `streams`: ADS multiplexes every cluster on one stream; the EDS service opens one per cluster.
async fn endpoints_follow_the_config(bootstrap: &str, kind: &str, streams: usize) {
    let server = Server::start(CLUSTERS).await;
    let mut envoy = Envoy::start(bootstrap, server.xds_port).await;
    let startup = Duration::from_secs(15);
    envoy
        .wait_for_hosts(
            "checkout",
            &[("127.0.0.1:9001", 300), ("127.0.0.1:9002", 300)],
            startup,
        )
        .await;
    envoy
        .wait_for_hosts("payments", &[("127.0.0.1:9101", 7)], startup)
        .await;

    server.rewrite_clusters(CHANGED);
    let change_seen = std::time::Instant::now();
    envoy
        .wait_for_hosts(
            "checkout",
            &[
                ("127.0.0.1:9001", 50),
                ("127.0.0.1:9002", 950),
                ("127.0.0.1:9003", 1),
            ],
            Duration::from_secs(5),
        )
        .await;
    eprintln!(
        "{bootstrap}: config edit reached Envoy in {:?}",
        change_seen.elapsed()
    );

    // An invalid edit is rejected with a log naming the file and field; Envoy keeps the last good.
    server.rewrite_clusters(
        "clusters:\n  - name: checkout\n    endpoints:\n      - { address: 127.0.0.1, port: 0 }\n",
    );
    let log = wait_for(Duration::from_secs(5), "the rejection log line", || {
        let log = server.process.log();
        async move { log.contains("config change rejected").then_some(log) }
    })
    .await;
    assert!(
        log.contains("clusters[0].endpoints[0].port: expected 1..65535, got 0"),
        "{log}"
    );
    assert!(
        log.contains(&server.config.display().to_string()),
        "the log names the file: {log}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    envoy
        .wait_for_hosts(
            "checkout",
            &[
                ("127.0.0.1:9001", 50),
                ("127.0.0.1:9002", 950),
                ("127.0.0.1:9003", 1),
            ],
            Duration::from_secs(1),
        )
        .await;

    // Envoy ACKed what we sent: its config dump holds the same assignment.
    let dumped = envoy
        .dumped_weights("checkout")
        .await
        .expect("checkout in config_dump");
    assert_eq!(
        dumped,
        vec![
            ("127.0.0.1:9001".to_string(), 50),
            ("127.0.0.1:9002".to_string(), 950),
            ("127.0.0.1:9003".to_string(), 1)
        ]
    );
    let (_, metrics) = http_get(&server.admin_url("/metrics"))
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!("adaptive_eds_xds_acks_total{{kind=\"{kind}\"}}")),
        "ACKs counted for {kind}:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "adaptive_eds_xds_streams{{kind=\"{kind}\"}} {streams}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("adaptive_eds_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("adaptive_eds_xds_nacks_total"),
        "Envoy NACKed something:\n{metrics}"
    );
    envoy.process.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_state_of_the_world() {
    endpoints_follow_the_config("ads-sotw.yaml", "ads-sotw", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta() {
    endpoints_follow_the_config("ads-delta.yaml", "ads-delta", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_service() {
    endpoints_follow_the_config("eds.yaml", "eds-sotw", 2).await;
}
