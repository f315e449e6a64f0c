//! Drives an in-process emulated fleet with open-loop Poisson load and reports fidelity and CPU.
//!
//! `cargo run --release --example drive_fleet -- [fleet.yaml] [rps] [seconds]`
//! (defaults: fleets/seed.yaml 1000 10). Requests go to pods chosen uniformly at random.
//! Prints, per pod, requests, mean latency versus the configured mean service time, and the
//! CPU counter's rate versus `rps * mean`; then the process CPU (emulator plus this load
//! generator) in cores.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lab::emulator::start_fleet;
use lab::fleet::load_fleet;
use rand::Rng;
use rand_distr::{Distribution, Exp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[derive(Default)]
struct PodStats {
    requests: AtomicU64,
    failures: AtomicU64,
    latency_micros: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let fleet_path = args.next().unwrap_or_else(|| "fleets/seed.yaml".to_owned());
    let rps: f64 = args.next().map_or(Ok(1000.0), |text| text.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |text| text.parse())?;
    let fleet = load_fleet(std::path::Path::new(&fleet_path))?;
    let running = start_fleet(&fleet, 0).await?;
    let nodes = running.nodes().to_vec();
    let stats: Arc<Vec<PodStats>> = Arc::new(nodes.iter().map(|_| PodStats::default()).collect());
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http::<Empty<Bytes>>();
    let gaps = Exp::new(rps)?;
    let cpu_before = process_cpu_seconds();
    let counters_before: Vec<f64> = nodes
        .iter()
        .map(|running| running.node.metrics().cpu_seconds())
        .collect();
    let start = Instant::now();
    let mut next = start;
    let mut tasks = tokio::task::JoinSet::new();
    while next < start + Duration::from_secs(seconds) {
        let (gap, index) = {
            let mut random = rand::rng();
            (
                gaps.sample(&mut random),
                random.random_range(0..nodes.len()),
            )
        };
        next += Duration::from_secs_f64(gap);
        tokio::time::sleep_until(next.into()).await;
        let uri: hyper::Uri = format!("http://{}/", nodes[index].address).parse()?;
        let client = client.clone();
        let stats = Arc::clone(&stats);
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(10), async {
                let response = client.get(uri).await?;
                response.into_body().collect().await?;
                anyhow::Ok(())
            })
            .await;
            let pod = &stats[index];
            match result {
                Ok(Ok(())) => {
                    pod.requests.fetch_add(1, Ordering::Relaxed);
                    pod.latency_micros
                        .fetch_add(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                _ => {
                    pod.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let wall = start.elapsed().as_secs_f64();
    let cpu = (process_cpu_seconds() - cpu_before) / wall;
    println!("{fleet_path}: {rps} rps offered for {seconds} s; wall {wall:.1} s\n");
    println!("| pod | requests | failures | mean latency ms | mean service ms | CPU counter rate cores | expected cores |");
    println!("|---|---|---|---|---|---|---|");
    let (mut total_rate, mut total_expected) = (0.0, 0.0);
    for ((node, pod), before) in nodes.iter().zip(stats.iter()).zip(counters_before) {
        let requests = pod.requests.load(Ordering::Relaxed);
        let mean_latency =
            pod.latency_micros.load(Ordering::Relaxed) as f64 / requests.max(1) as f64 / 1000.0;
        let mean_service = node.node.pod().service_time.overall_mean_ms();
        let rate = (node.node.metrics().cpu_seconds() - before) / wall;
        let expected = requests as f64 / wall * mean_service / 1000.0;
        total_rate += rate;
        total_expected += expected;
        println!(
            "| {} | {requests} | {} | {mean_latency:.2} | {mean_service:.2} | {rate:.3} | {expected:.3} |",
            node.node.name(),
            pod.failures.load(Ordering::Relaxed),
        );
    }
    println!("\nCPU counter rate, all pods: {total_rate:.3} cores (expected from completed requests x mean: {total_expected:.3})");
    println!("Process CPU (emulator + load generator): {cpu:.3} cores");
    drop(client);
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
