//! One tick at scale: weighting + snapshot build + encode + publish for 100 clusters x 1,000
//! endpoints, with fresh CPU and request-rate samples for every pod.
//!
//! `cargo bench --bench tick` (release). Under `cargo test --all-targets` each case runs once.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use adaptive_eds::{
    config::{self, metrics::JoinBy},
    discovery::file::diff,
    engine::Engine,
    samples::{unix_millis, Sample, SampleSet, SampleTable, Signal, SourceKind},
    snapshot::SnapshotStore,
    telemetry::Metrics,
};

const CLUSTERS: usize = 100;
const ENDPOINTS: usize = 1000;

fn main() {
    divan::main();
}

fn config_text() -> String {
    let mut text = String::from("metrics: { prometheus: { url: \"http://127.0.0.1:1\", rps_query: \"x\" } }\nweighting: { algorithm: capacity, objective: latency }\nclusters:\n");
    for cluster in 0..CLUSTERS {
        text.push_str(&format!(
            "  - name: cluster-{cluster}\n    namespace: n\n    container: c\n    endpoints:\n"
        ));
        for endpoint in 0..ENDPOINTS {
            text.push_str(&format!(
                "      - {{ address: 10.{}.{}.{}, port: 8080, pod: pod-{cluster}-{endpoint} }}\n",
                cluster,
                endpoint / 256,
                endpoint % 256
            ));
        }
    }
    text
}

/// An engine with every cluster loaded and fresh samples (cost per request varies 1..8x).
fn engine() -> (Engine, SampleTable) {
    let parsed = config::parse(&config_text()).expect("valid bench config");
    let table = SampleTable::default();
    fill(&table, 0);
    let mut engine = Engine::new(
        Arc::new(parsed.adaptive.clone()),
        table.clone(),
        SnapshotStore::new(),
        Metrics::default(),
    );
    engine.apply(diff(&Default::default(), &parsed.clusters));
    engine.publish();
    (engine, table)
}

fn fill(table: &SampleTable, round: usize) {
    let now = unix_millis(SystemTime::now());
    for cluster in 0..CLUSTERS {
        let mut cpu = HashMap::new();
        let mut rps = HashMap::new();
        for endpoint in 0..ENDPOINTS {
            let pod = format!("pod-{cluster}-{endpoint}");
            let cost = 0.001 * (1 + (endpoint + round) % 8) as f64;
            rps.insert(
                pod.clone(),
                Sample {
                    value: 50.0,
                    timestamp_ms: now,
                },
            );
            cpu.insert(
                pod,
                Sample {
                    value: 50.0 * cost,
                    timestamp_ms: now,
                },
            );
        }
        let name = format!("cluster-{cluster}");
        table.replace(
            SourceKind::Pull,
            &name,
            Signal::Cpu,
            SampleSet {
                join_by: JoinBy::Pod,
                samples: cpu,
            },
        );
        table.replace(
            SourceKind::Pull,
            &name,
            Signal::Rps,
            SampleSet {
                join_by: JoinBy::Pod,
                samples: rps,
            },
        );
    }
}

/// Every cluster recomputed, re-encoded and published (the worst case: all weights moved).
#[divan::bench(sample_count = 10)]
fn tick_all_clusters_reencoded(bencher: divan::Bencher) {
    let (mut engine, _table) = engine();
    bencher.bench_local(|| {
        engine.recompute_all(true);
        engine.publish()
    });
}

/// Every cluster recomputed with new samples; only moved clusters are re-encoded.
#[divan::bench(sample_count = 10)]
fn tick_all_clusters_new_samples(bencher: divan::Bencher) {
    let (mut engine, table) = engine();
    let mut round = 0;
    // New samples are written before each measured tick, outside the timing.
    bencher
        .with_inputs(|| {
            round += 1;
            fill(&table, round);
        })
        .bench_local_values(|()| {
            engine.recompute_all(false);
            engine.publish()
        });
}
