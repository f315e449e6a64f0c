//! Integration tests of the backend emulator over real HTTP on 127.0.0.1.

mod common;

use common::{crate_file, get, request};
use hyper::{Method, StatusCode};
use lab::emulator::{start_fleet, ORCA_HEADER};
use lab::fleet::{load_fleet, parse_fleet};
use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(5);

fn single_node_fleet(cores: u32, mean_ms: f64) -> lab::fleet::Fleet {
    let text = format!(
        "namespace: test\norca: true\ngroups:\n  - name: node\n    replicas: 1\n    cores: {cores}\n    service_time: {{ mean_ms: {mean_ms}, sigma: 0.0 }}\n"
    );
    parse_fleet(&text, "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_node_answers_and_exposes_metrics() {
    let fleet = load_fleet(&crate_file("fleets/seed.yaml")).unwrap();
    let running = start_fleet(&fleet, 0).await.unwrap();
    assert_eq!(running.nodes().len(), 15);
    for node in running.nodes() {
        let reply = get(node.address, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "ok\n");
        let orca = reply.headers.get(ORCA_HEADER).unwrap().to_str().unwrap();
        assert!(orca.starts_with("TEXT cpu_utilization:"), "{orca}");
        assert!(orca.contains(",rps_fractional:"), "{orca}");
    }
    let metrics = get(running.nodes()[0].address, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let expected =
        "container_cpu_usage_seconds_total{namespace=\"lab\",pod=\"fib25-0\",container=\"app\"}";
    assert!(metrics.body.contains(expected), "{}", metrics.body);
    assert!(metrics
        .body
        .contains("emulator_requests_total{namespace=\"lab\",pod=\"fib25-0\",code=\"200\"} 1"));
    // Both codes are exported from the start, so a healthy pod reads as zero errors.
    assert!(metrics
        .body
        .contains("emulator_requests_total{namespace=\"lab\",pod=\"fib25-0\",code=\"503\"} 0"));
    assert!(metrics
        .body
        .contains("emulator_request_errors_total{namespace=\"lab\",pod=\"fib25-0\"} 0"));
    assert!(metrics
        .body
        .contains("emulator_request_duration_seconds_bucket"));
    running.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_counter_matches_busy_time() {
    // As many clients as slots, so no request waits for a slot: each client-side latency
    // is the slot's busy time plus HTTP overhead, and each busy time is at least 5 ms.
    let fleet = single_node_fleet(2, 5.0);
    let running = start_fleet(&fleet, 0).await.unwrap();
    let node = running.nodes()[0].clone();
    let per_client = 20;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let address = node.address;
        clients.spawn(async move {
            let mut observed = Duration::ZERO;
            for _ in 0..per_client {
                let started = Instant::now();
                assert_eq!(get(address, "/").await.status, StatusCode::OK);
                observed += started.elapsed();
            }
            observed
        });
    }
    let mut observed = Duration::ZERO;
    while let Some(result) = clients.join_next().await {
        observed += result.unwrap();
    }
    let nominal = 2.0 * f64::from(per_client) * 0.005;
    let counted = node.node.metrics().cpu_seconds();
    let observed = observed.as_secs_f64();
    assert!(
        counted >= nominal && counted <= observed,
        "counted {counted} s, nominal {nominal} s, seen by clients {observed} s"
    );
    let load = node.node.recent_load();
    assert!(
        load.requests_per_second > 0.0 && load.utilization > 0.0,
        "{load:?}"
    );
    running.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_makes_requests_slower() {
    let fleet = single_node_fleet(1, 5.0);
    let running = start_fleet(&fleet, 0).await.unwrap();
    let running_node = running.nodes()[0].clone();
    let reply = request(running_node.address, Method::POST, "/admin/slowdown", "4").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(running_node.node.slowdown(), 4.0);
    let before = running_node.node.metrics().cpu_seconds();
    let started = Instant::now();
    get(running_node.address, "/").await;
    let slowed = started.elapsed();
    let busy = running_node.node.metrics().cpu_seconds() - before;
    // The timer never wakes early, so a 4x slower 5 ms request holds its slot >= 20 ms.
    assert!(busy >= 0.020, "slot held {busy} s");
    assert!(slowed >= Duration::from_millis(20), "{slowed:?}");
    let bad = request(
        running_node.address,
        Method::POST,
        "/admin/slowdown",
        "fast",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(running_node.node.slowdown(), 4.0);
    running.shutdown(GRACE).await;
}

/// A failing pod answers its failing share with a fast 503 carrying the ORCA header, counts
/// the failures by code and as errors, and counts only the short failure time as CPU; the admin
/// endpoint turns the failure on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pod_answers_fast_503s_and_counts_them() {
    let fleet = single_node_fleet(1, 20.0);
    let running = start_fleet(&fleet, 0).await.unwrap();
    let node = running.nodes()[0].clone();
    let reply = request(node.address, Method::POST, "/admin/failing", "1 0.2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let before = node.node.metrics().cpu_seconds();
    let started = Instant::now();
    for _ in 0..10 {
        let reply = get(node.address, "/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.headers.contains_key(ORCA_HEADER));
    }
    let busy = node.node.metrics().cpu_seconds() - before;
    // Ten failures of 0.2 ms hold the slot >= 2 ms and far less than one 20 ms request.
    assert!((0.002..0.015).contains(&busy), "slot held {busy} s");
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(node.node.metrics().requests(), (10, 10));
    let metrics = get(node.address, "/metrics").await.body;
    assert!(
        metrics
            .contains("emulator_requests_total{namespace=\"test\",pod=\"node-0\",code=\"503\"} 10"),
        "{metrics}"
    );
    assert!(metrics.contains("emulator_request_errors_total{namespace=\"test\",pod=\"node-0\"} 10"));
    let bad = request(node.address, Method::POST, "/admin/failing", "2").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let reply = request(node.address, Method::POST, "/admin/failing", "0").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(get(node.address, "/").await.status, StatusCode::OK);
    assert_eq!(node.node.metrics().requests(), (11, 10));
    running.shutdown(GRACE).await;
}

/// `POST /admin/stop` stops one pod's server (connections refused within a bounded wait) and
/// leaves the other pods serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pod_refuses_connections_and_the_others_serve() {
    let text = "namespace: test\ngroups:\n  - name: node\n    replicas: 2\n    cores: 1\n    service_time: { mean_ms: 1.0, sigma: 0.0 }\n";
    let fleet = parse_fleet(text, "test").unwrap();
    let running = start_fleet(&fleet, 0).await.unwrap();
    let (first, second) = (running.nodes()[0].clone(), running.nodes()[1].clone());
    let reply = request(first.address, Method::POST, "/admin/stop", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(first.address).await.is_ok() {
        assert!(Instant::now() < deadline, "the stopped pod still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(second.address, "/").await.status, StatusCode::OK);
    running.shutdown(GRACE).await;
}
