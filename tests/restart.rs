//! Kill -9 the control plane while a real Envoy carries load to loopback backends: Envoy keeps its
//! last endpoints, not one request fails, and after a restart Envoy reconnects with the version it
//! has and gets no push (same content, same version: no churn).

mod support;

use std::time::{Duration, Instant};

use adaptive_eds::inspect::pb::{inspect_client::InspectClient, ListClientsRequest};
use support::{wait_for, Envoy, FakeBackends, FakePod};

/// Sends `rate` requests per second through Envoy for `duration` (open loop: one task per request),
/// returning (ok, failed).
async fn drive(port: u16, rate: u32, duration: Duration) -> (usize, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let interval = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut next = started;
    while started.elapsed() < duration {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = client.get(format!("http://127.0.0.1:{port}/")).send().await;
            if std::env::var_os("DEBUG_DRIVE").is_some() {
                eprintln!("{outcome:?}");
            }
            matches!(outcome, Ok(response) if response.status().is_success())
        }));
    }
    let sent = tasks.len();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            ok += 1;
        }
    }
    (ok, sent - ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_request_and_restart_causes_no_churn() {
    let backends = FakeBackends::start(
        "shop",
        "web",
        vec![
            FakePod {
                pod: "a",
                cores: 0.1,
                rps: 1.0,
            },
            FakePod {
                pod: "b",
                cores: 0.1,
                rps: 1.0,
            },
        ],
    )
    .await;
    let mut clusters = String::from("clusters:\n  - name: checkout\n    endpoints:\n");
    for address in &backends.addresses {
        clusters.push_str(&format!(
            "      - {{ address: 127.0.0.1, port: {}, weight: 10 }}\n",
            address.port()
        ));
    }
    // The bootstrap also asks for `payments`; serve it so Envoy's initialisation (and its
    // listener) does not wait for the initial fetch timeout.
    clusters.push_str("  - name: payments\n    endpoints: []\n");
    let directory = tempfile::tempdir().expect("tempdir");
    let (xds_port, admin_port) = (support::free_port(), support::free_port());
    let config = directory.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("xds: {{ listen: \"127.0.0.1:{xds_port}\" }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n{clusters}"),
    )
    .expect("write config");
    let mut server = support::spawn_server(&config, directory.path());
    support::wait_ready(admin_port).await;
    let envoy = Envoy::start("ads-sotw.yaml", xds_port).await;
    let expected: Vec<(String, u64)> = backends
        .addresses
        .iter()
        .map(|address| (format!("127.0.0.1:{}", address.port()), 10))
        .collect();
    let expected: Vec<(&str, u64)> = expected
        .iter()
        .map(|(host, weight)| (host.as_str(), *weight))
        .collect();
    envoy
        .wait_for_hosts("checkout", &expected, Duration::from_secs(15))
        .await;
    let version = {
        let mut inspect = InspectClient::connect(format!("http://127.0.0.1:{xds_port}"))
            .await
            .expect("inspect");
        let clients = inspect
            .list_clients(ListClientsRequest {})
            .await
            .expect("clients")
            .into_inner();
        // The shipped bootstrap also opens a load-reporting stream (kind `lrs`).
        clients
            .clients
            .iter()
            .find(|client| client.stream_kind == "ads-sotw")
            .expect("the ADS client")
            .last_acked_version
            .clone()
    };

    let load = tokio::spawn(drive(envoy.listener_port, 100, Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.signal("KILL");
    assert!(
        server.wait_exit(Duration::from_secs(5)).is_none(),
        "SIGKILL leaves no exit code"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    envoy
        .wait_for_hosts("checkout", &expected, Duration::from_secs(1))
        .await;
    let mut restarted = support::spawn_server(&config, directory.path());
    support::wait_ready(admin_port).await;
    let (ok, failed) = load.await.expect("load task");
    eprintln!("requests through Envoy while the control plane was killed and restarted: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "{ok} ok");

    let inspect = InspectClient::connect(format!("http://127.0.0.1:{xds_port}"))
        .await
        .expect("inspect");
    let reconnected = wait_for(
        Duration::from_secs(30),
        "Envoy reconnected to the restarted server",
        || {
            let mut inspect = inspect.clone();
            async move {
                let clients = inspect
                    .list_clients(ListClientsRequest {})
                    .await
                    .ok()?
                    .into_inner();
                clients.clients.into_iter().find(|client| {
                    client.node_id == "envoy-ads-sotw"
                        && client.stream_kind == "ads-sotw"
                        && !client.subscribed.is_empty()
                })
            }
        },
    )
    .await;
    assert_eq!(
        reconnected.last_acked_version, version,
        "Envoy kept the version it had"
    );
    assert_eq!(
        reconnected.pushes, 0,
        "the same content is not pushed again"
    );
    restarted.assert_running();
}
