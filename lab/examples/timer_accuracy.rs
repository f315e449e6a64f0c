//! Measures lateness and CPU cost of three ways to hold a 2 ms service time.
//!
//! Run with `cargo run --release --example timer_accuracy`. Each method runs the same
//! number of concurrent sleepers for the same wall time; CPU is the process's user+system
//! time (getrusage) divided by wall time, so 1.0 means one core fully busy.

use lab::emulator::PreciseTimer;
use std::time::{Duration, Instant};

const TARGET: Duration = Duration::from_millis(2);
const RUN: Duration = Duration::from_secs(3);

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

/// Tokio sleep until 1 ms before the deadline, then yield in a loop until it passes.
async fn hybrid_spin(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(Duration::from_millis(1)) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

async fn measure<F, Fut>(name: &str, sleepers: usize, sleep: F)
where
    F: Fn(Instant) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cpu_before = process_cpu_seconds();
    let wall_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sleepers {
        let sleep = sleep.clone();
        tasks.spawn(async move {
            let mut lateness = Vec::new();
            while wall_start.elapsed() < RUN {
                let start = Instant::now();
                sleep(start + TARGET).await;
                lateness.push(start.elapsed().saturating_sub(TARGET));
            }
            lateness
        });
    }
    let mut all = Vec::new();
    while let Some(Ok(mut lateness)) = tasks.join_next().await {
        all.append(&mut lateness);
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = (process_cpu_seconds() - cpu_before) / wall;
    all.sort();
    let percentile = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    let mean = all.iter().sum::<Duration>() / all.len() as u32;
    println!(
        "| {name} | {sleepers} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
        all.len(),
        mean.as_secs_f64() * 1e6,
        percentile(0.5).as_secs_f64() * 1e6,
        percentile(0.99).as_secs_f64() * 1e6,
        cpu
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    println!("Concurrent sleepers of {TARGET:?} each, {RUN:?} per row\n");
    println!(
        "| method | sleepers | sleeps | mean late µs | p50 late µs | p99 late µs | CPU cores |"
    );
    println!("|---|---|---|---|---|---|---|");
    let timer = PreciseTimer::start()?;
    for sleepers in [1, 4, 64] {
        measure("tokio::time::sleep", sleepers, |deadline| {
            tokio::time::sleep_until(deadline.into())
        })
        .await;
        measure("tokio sleep + yield spin", sleepers, hybrid_spin).await;
        let timer = timer.clone();
        measure("precise timer thread", sleepers, move |deadline| {
            timer.sleep_until(deadline)
        })
        .await;
    }
    Ok(())
}
