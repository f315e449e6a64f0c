//! Two replicas pulling the same real VictoriaMetrics a few hundred milliseconds apart read the
//! same samples: each pull is evaluated at an instant of a wall-clock grid they share.
//!
//! The exporter's gauge is its clock, so two evaluations at different instants that straddle a
//! scrape can never read the same value.

mod support;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use adaptive_eds::{metrics::prometheus, samples::SampleTable, telemetry::Metrics};
use support::{wait_for, VictoriaMetrics};
use tokio::sync::{mpsc, watch};

/// Serves `clock_millis{pod=...}`, the exporter's clock at the scrape, for pods `a` and `b`.
async fn clock_exporter() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the exporter");
    let address = listener.local_addr().expect("exporter address");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis());
            format!(
                "clock_millis{{pod=\"a\"}} {millis}\nclock_millis{{pod=\"b\"}} {}\n",
                millis + 1
            )
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, task)
}

/// The CPU readings of pods `a` and `b` that the pull wrote into `table`, with their ages at
/// `now` (an evaluation instant's samples carry that instant as their timestamp).
fn readings(
    table: &SampleTable,
    config: &adaptive_eds::config::ValidConfig,
    now: SystemTime,
) -> Vec<Option<(f64, Duration)>> {
    table
        .loads("shop", &config.clusters["shop"], now)
        .iter()
        .map(|load| load.cpu.map(|reading| (reading.value, reading.age)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_pulling_apart_read_the_same_samples() {
    let (exporter, exporter_task) = clock_exporter().await;
    let victoria = VictoriaMetrics::start(&[exporter]).await;
    let config = adaptive_eds::config::parse(&format!(
        "tick: 1s\n\
         metrics: {{ prometheus: {{ url: \"{}\", cpu_query: 'max(clock_millis) by (pod)' }} }}\n\
         clusters:\n  - {{ name: shop, endpoints: [{{ address: 10.0.0.1, port: 80, pod: a }}, {{ address: 10.0.0.2, port: 80, pod: b }}] }}\n",
        victoria.url()
    ))
    .expect("valid config");
    // Two replicas' pull loops, the second started 400 ms after the first.
    let mut replicas = Vec::new();
    let mut tasks = Vec::new();
    for delay in [0, 400] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let (config_sender, config_receiver) = watch::channel(Arc::new(config.adaptive.clone()));
        let (pulled, mut names) = mpsc::channel::<adaptive_eds::samples::Arrived>(16);
        let table = SampleTable::default();
        let (metrics, _registry) = Metrics::registered();
        // No engine here, so no cluster is ever pulled eagerly.
        let (_eager, eager) = watch::channel(std::collections::BTreeSet::new());
        tasks.push(tokio::spawn(prometheus::run(
            config_receiver,
            table.clone(),
            metrics,
            pulled,
            eager,
        )));
        // Drained, so that the loop never waits on the engine it has not got.
        tasks.push(tokio::spawn(async move {
            while names.recv().await.is_some() {}
        }));
        replicas.push((table, config_sender));
    }
    // Each comparison waits for both replicas to hold the samples of one instant (equal ages at
    // one `now`), then asks for equal values; the gauge moves at every scrape, once a second.
    let mut values = std::collections::BTreeSet::new();
    for comparison in 0..6 {
        // The first waits for the store's first scrapes too.
        let wait = Duration::from_secs(if comparison == 0 { 20 } else { 5 });
        let (first, second) = wait_for(
            wait,
            "both replicas hold the samples of the same instant",
            || async {
                let now = SystemTime::now();
                let first = readings(&replicas[0].0, &config, now);
                let second = readings(&replicas[1].0, &config, now);
                let ages = |readings: &[Option<(f64, Duration)>]| -> Option<Vec<Duration>> {
                    readings
                        .iter()
                        .map(|reading| reading.map(|(_, age)| age))
                        .collect()
                };
                (ages(&first)? == ages(&second)?).then_some((first, second))
            },
        )
        .await;
        eprintln!("comparison {comparison}: {first:?} {second:?}");
        assert_eq!(first, second, "the same instant read different samples");
        values.insert(first[0].map_or(0, |(value, _)| value as u64));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The store moved between the comparisons, so the equality is the grid's doing.
    assert!(values.len() >= 3, "the clock did not move: {values:?}");
    for task in &tasks {
        task.abort();
    }
    exporter_task.abort();
}
