//! Two replicas, each fed load reports by its own real Envoy, share their aggregates through a
//! real VictoriaMetrics (it scrapes both replicas' `/metrics`, each replica pulls the sums) and
//! serve the same weights, including holding the same failing pod.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use support::traffic::{SwitchableBackends, Traffic};
use support::{
    free_port, spawn_server, wait_for, wait_ready, write_config, Envoy, VictoriaMetrics,
};

/// The replica config: load reports shared through the store, the sums pulled back by address.
fn replica_config(cluster: &str, ports: &[u16], victoria: &str) -> String {
    let sum = |family: &str| {
        format!(
            "'sum by (endpoint) (adaptive_eds_lrs_endpoint_{family}{{cluster=\"${{cluster}}\"}})'"
        )
    };
    let mut yaml = format!(
        "tick: 1s\n\
         metrics:\n  \
           load_reports: {{ enabled: true, interval: 1s, shared_via_store: true }}\n  \
           prometheus:\n    \
             url: {victoria}\n    \
             # No CPU series in this test (the replicas plan from requests in flight); with\n    \
             # cAdvisor, the default container CPU query goes here.\n    \
             cpu_query: 'sum by (endpoint) (adaptive_eds_lrs_endpoint_requests_in_flight{{cluster=\"${{cluster}}\"}}) < 0'\n    \
             rps_query: {}\n    \
             error_query: {}\n    \
             in_flight_query: {}\n    \
             join_label: endpoint\n    \
             join_by: address\n\
         weighting: {{ objective: balance, default_cpu_limit: 4 }}\n\
         clusters:\n  - name: \"{cluster}\"\n    endpoints:\n",
        sum("requests_per_second"),
        sum("errors_per_second"),
        sum("requests_in_flight"),
    );
    for port in ports {
        yaml.push_str(&format!("      - {{ address: 127.0.0.1, port: {port} }}\n"));
    }
    yaml
}

/// Weights by `address:port` from one replica's Inspect API.
async fn inspect_weights(xds_port: u16, cluster: &str) -> Option<Vec<(String, u32, String)>> {
    use adaptive_eds::inspect::pb::{inspect_client::InspectClient, GetClusterRequest};
    let mut client = InspectClient::connect(format!("http://127.0.0.1:{xds_port}"))
        .await
        .ok()?;
    let cluster = client
        .get_cluster(GetClusterRequest {
            name: cluster.into(),
        })
        .await
        .ok()?
        .into_inner();
    let mut weights: Vec<(String, u32, String)> = cluster
        .endpoints
        .into_iter()
        .map(|endpoint| {
            (
                format!("{}:{}", endpoint.address, endpoint.port),
                endpoint.weight,
                endpoint.source,
            )
        })
        .collect();
    weights.sort();
    Some(weights)
}

/// Whether two weight lists agree within `threshold` (relative) per endpoint.
fn agree(left: &[(String, u32, String)], right: &[(String, u32, String)], threshold: f64) -> bool {
    left.len() == right.len()
        && left.iter().zip(right).all(|(a, b)| {
            a.0 == b.0
                && a.2 == b.2
                && (f64::from(a.1) - f64::from(b.1)).abs()
                    <= threshold * f64::from(a.1.max(b.1)).max(1.0)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fed_by_different_envoys_serve_the_same_weights() {
    let backends = SwitchableBackends::start(3, Duration::from_millis(5)).await;
    let cluster = "checkout";
    let replicas: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let targets: Vec<std::net::SocketAddr> = replicas
        .iter()
        .map(|(_, admin)| std::net::SocketAddr::from(([127, 0, 0, 1], *admin)))
        .collect();
    let victoria = VictoriaMetrics::start(&targets).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let mut processes = Vec::new();
    for (index, (xds, admin)) in replicas.iter().enumerate() {
        let replica = directory.path().join(format!("replica-{index}"));
        std::fs::create_dir_all(&replica).expect("replica directory");
        let config = write_config(
            &replica,
            *xds,
            *admin,
            &replica_config(cluster, &backends.ports, &victoria.url()),
        );
        processes.push(spawn_server(&config, &replica));
        wait_ready(*admin).await;
    }
    // Each Envoy reports to its own replica and sends its own share of the traffic.
    let envoy_a = Envoy::start("ads-sotw.yaml", replicas[0].0).await;
    let envoy_b = Envoy::start("ads-sotw.yaml", replicas[1].0).await;
    for envoy in [&envoy_a, &envoy_b] {
        wait_for(
            Duration::from_secs(20),
            "Envoy has the endpoints",
            || async { (envoy.hosts(cluster).await?.len() == 3).then_some(()) },
        )
        .await;
    }
    let traffic_a = Traffic::start(envoy_a.listener_port, 3, Duration::from_secs(180));
    let traffic_b = Traffic::start(envoy_b.listener_port, 1, Duration::from_secs(180));

    // Both replicas weigh from the pulled sums: the same samples, the same weights.
    let started = std::time::Instant::now();
    let seen = std::sync::Mutex::new(None::<String>);
    let settled = wait_for(
        Duration::from_secs(30),
        "both replicas serve fresh, equal weights",
        || async {
            let a = inspect_weights(replicas[0].0, cluster).await?;
            let b = inspect_weights(replicas[1].0, cluster).await?;
            // What each poll saw, on stderr (shown when the test fails).
            let observed = format!("{a:?} {b:?}");
            let mut seen = seen.lock().ok()?;
            if seen.replace(observed.clone()) != Some(observed) {
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!("{elapsed:.1} s into the traffic: {a:?} {b:?}");
            }
            drop(seen);
            let fresh = a.iter().all(|(_, _, source)| source == "fresh");
            (fresh && agree(&a, &b, 0.05)).then_some((a, b))
        },
    )
    .await;
    eprintln!("healthy: {settled:?}");

    // A pod turning to fast 503s is held on both replicas, though each sees only its Envoy's part.
    backends.failing[1].store(true, Ordering::Relaxed);
    let failing = format!("127.0.0.1:{}", backends.ports[1]);
    let switched = std::time::Instant::now();
    let last = std::sync::Mutex::new(None::<String>);
    let observe = || async {
        let a = inspect_weights(replicas[0].0, cluster).await?;
        let b = inspect_weights(replicas[1].0, cluster).await?;
        // What each poll saw, on stderr (shown when the test fails).
        let observed = format!("{a:?} {b:?}");
        let mut last = last.lock().ok()?;
        if last.replace(observed.clone()) != Some(observed) {
            let elapsed = switched.elapsed().as_secs_f64();
            eprintln!("{elapsed:.1} s after the switch: {a:?} {b:?}");
        }
        Some((a, b))
    };
    let holds = |weights: &[(String, u32, String)]| {
        weights
            .iter()
            .any(|(name, _, source)| *name == failing && source == "failing")
    };
    wait_for(
        Duration::from_secs(30),
        "both replicas hold the failing pod",
        || async {
            let (a, b) = observe().await?;
            (holds(&a) && holds(&b)).then_some(())
        },
    )
    .await;
    // Then the rest agree again. Each replica's cost averages were built from the scrapes its own
    // ticks happened to read while the traffic moved off the failing pod, so they meet at the
    // averaging's pace (`smoothing` 0.5 per tick, a few ticks once the traffic is steady), later
    // when a loaded machine delays ticks and scrapes; the pod stays held on both all along.
    let held = wait_for(
        Duration::from_secs(60),
        "both replicas hold the failing pod and agree on the healthy two, within 2x of each other",
        || async {
            let (a, b) = observe().await?;
            assert!(
                holds(&a) && holds(&b),
                "a replica released the failing pod: {a:?} {b:?}"
            );
            // The two healthy pods are alike: a noisy reading must not leave one of them starved.
            let healthy: Vec<f64> = a
                .iter()
                .filter(|(name, _, _)| *name != failing)
                .map(|(_, weight, _)| f64::from(*weight))
                .collect();
            let balanced = healthy.iter().copied().fold(0.0, f64::max)
                <= 2.0 * healthy.iter().copied().fold(f64::INFINITY, f64::min);
            (agree(&a, &b, 0.05) && balanced).then_some((a, b))
        },
    )
    .await;
    eprintln!("failing: {held:?}");
    backends.failing[1].store(false, Ordering::Relaxed);
    traffic_a.stop().await;
    traffic_b.stop().await;
    drop((envoy_a, envoy_b));
    drop(processes);
}
