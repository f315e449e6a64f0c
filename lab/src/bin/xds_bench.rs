//! Control-plane scale benchmark: N subscribers on C clusters of E endpoints; how fast a weight
//! change reaches all of them, what each costs the server, and SotW vs delta bytes.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use adaptive_eds::inspect::pb::{inspect_client::InspectClient, ListClustersRequest};
use anyhow::{bail, Context};
use clap::Parser;
use lab::xds_load::{self, Mode};

/// Scale benchmark of adaptive-eds's xDS fan-out (everything on 127.0.0.1).
#[derive(Debug, Parser)]
struct Args {
    /// Path of the adaptive-eds binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/adaptive-eds")]
    server: PathBuf,
    /// Subscribers (simulated Envoys).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Streams per HTTP/2 connection (1 = one connection per client, like Envoy).
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Clusters in the config; every client subscribes to all of them.
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// How many clusters each change touches.
    #[arg(long, default_value_t = 1)]
    changed: usize,
    /// Weight changes to measure.
    #[arg(long, default_value_t = 3)]
    changes: usize,
    /// SotW or delta ADS.
    #[arg(long, value_enum, default_value_t = Mode::Sotw)]
    mode: Mode,
    /// Longest wait for all clients to get one version.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Extra `xds:` keys for the server, as `KEY: VALUE` (repeatable), e.g.
    /// `--xds "http2_stream_window_bytes: 65535"`, to compare transport settings.
    #[arg(long = "xds")]
    xds_options: Vec<String>,
}

fn config_text(
    xds_port: u16,
    admin_port: u16,
    xds_options: &[String],
    clusters: usize,
    endpoints: usize,
    generation: usize,
    changed: usize,
) -> String {
    let extra: String = xds_options
        .iter()
        .map(|option| format!(", {option}"))
        .collect();
    let mut text = format!(
        "xds: {{ listen: \"127.0.0.1:{xds_port}\"{extra} }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\nclusters:\n"
    );
    for cluster in 0..clusters {
        let bump = if cluster < changed { generation } else { 0 };
        let _ = writeln!(text, "  - name: cluster-{cluster}\n    endpoints:");
        for endpoint in 0..endpoints {
            let _ = writeln!(
                text,
                "      - {{ address: 10.{}.{}.{}, port: 8080, weight: {} }}",
                cluster % 256,
                endpoint / 256,
                endpoint % 256,
                100 + (endpoint + bump) % 50
            );
        }
    }
    text
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The server process, killed on drop.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (CPU seconds, RSS KiB, peak RSS KiB) of a process, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/PID/stat")?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks / 100.0, field("VmRSS:"), field("VmHWM:")))
}

async fn metric(admin_port: u16, name: &str) -> u64 {
    let Ok(response) = reqwest_get(admin_port).await else {
        return 0;
    };
    response
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

async fn reqwest_get(admin_port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.server.is_file() {
        bail!(
            "{}: no adaptive-eds binary; run `cargo build --release` first or pass --server",
            args.server.display()
        );
    }
    let directory = std::env::temp_dir().join(format!("xds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let (xds_port, admin_port) = (free_port()?, free_port()?);
    let config = directory.join("config.yaml");
    std::fs::write(
        &config,
        config_text(
            xds_port,
            admin_port,
            &args.xds_options,
            args.clusters,
            args.endpoints,
            0,
            args.changed,
        ),
    )?;
    let server = ServerProcess(
        Command::new(&args.server)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(directory.join("server.log"))?)
            .spawn()
            .context("start adaptive-eds")?,
    );
    let pid = server.0.id();
    let url = format!("http://127.0.0.1:{xds_port}");
    let mut inspect = wait_for_server(&url).await?;
    let (cpu_start, rss_idle, _) = process_usage(pid)?;

    let names: Vec<String> = (0..args.clusters)
        .map(|cluster| format!("cluster-{cluster}"))
        .collect();
    let connect_started = Instant::now();
    let fleet =
        xds_load::connect(&url, args.clients, args.per_connection, args.mode, names).await?;
    let deadline = Instant::now() + args.timeout;
    while fleet.arrivals.clients_with_any() < args.clients {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients got the initial version",
                fleet.arrivals.clients_with_any(),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_connected, _) = process_usage(pid)?;
    let encodes_before = metric(admin_port, "adaptive_eds_encodes_total").await;

    let mut rows = Vec::new();
    for change in 1..=args.changes {
        let before = inspect
            .list_clusters(ListClustersRequest {})
            .await?
            .into_inner()
            .snapshot_version;
        let (cpu_before_change, _, _) = process_usage(pid)?;
        std::fs::write(
            &config,
            config_text(
                xds_port,
                admin_port,
                &args.xds_options,
                args.clusters,
                args.endpoints,
                change,
                args.changed,
            ),
        )?;
        let (version, published_ms) = loop {
            let listed = inspect
                .list_clusters(ListClustersRequest {})
                .await?
                .into_inner();
            if listed.snapshot_version != before {
                break (listed.snapshot_version, listed.published_unix_ms);
            }
            if Instant::now() > deadline + args.timeout {
                bail!("change {change} was never published");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let wait_deadline = Instant::now() + args.timeout;
        // Every client subscribes to every cluster, so a SotW response's version_info (a hash of
        // what it carries) equals the snapshot version, as delta's system_version_info does.
        let arrivals = loop {
            let arrivals = fleet.arrivals.of(&version);
            if arrivals.len() >= args.clients || Instant::now() > wait_deadline {
                break arrivals;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut latencies: Vec<f64> = arrivals
            .iter()
            .map(|arrival| {
                let at = arrival
                    .at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                (at - published_ms) as f64
            })
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        let bytes =
            arrivals.iter().map(|arrival| arrival.bytes).sum::<usize>() / arrivals.len().max(1);
        // The second after the last arrival takes in the ACKs the clients send back, so the CPU
        // of an update is encoding, fan-out and the ACKs (plus the config reload that made it).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu_after_change, _, _) = process_usage(pid)?;
        rows.push((
            change,
            arrivals.len(),
            latencies,
            bytes,
            cpu_after_change - cpu_before_change,
        ));
    }
    let encodes_after = metric(admin_port, "adaptive_eds_encodes_total").await;
    // Idle again after the pushes: what each stream keeps once its largest response is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_end, rss_after_changes, peak) = process_usage(pid)?;
    drop(fleet);

    println!(
        "## xds-bench {}\n",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    println!(
        "command: cargo run --release -p lab --bin xds_bench -- --clients {} --per-connection {} --clusters {} --endpoints {} --changed {} --changes {} --mode {:?}{}\n",
        args.clients, args.per_connection, args.clusters, args.endpoints, args.changed, args.changes, args.mode,
        args.xds_options.iter().map(|option| format!(" --xds \"{option}\"")).collect::<String>()
    );
    println!(
        "| change | clients reached | first ms | p50 ms | p99 ms | max ms | bytes per client | server CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (change, reached, latencies, bytes, cpu) in &rows {
        println!(
            "| {change} | {reached}/{} | {:.0} | {:.0} | {:.0} | {:.0} | {bytes} | {cpu:.2} |",
            args.clients,
            percentile(latencies, 0.0),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            percentile(latencies, 1.0)
        );
    }
    let per_client = |rss: u64| rss.saturating_sub(rss_idle) as f64 / args.clients as f64;
    let cpu_per_update = rows.iter().map(|row| row.4).sum::<f64>() / rows.len().max(1) as f64;
    let worst_p99 = rows
        .iter()
        .map(|row| percentile(&row.2, 0.99))
        .fold(f64::NAN, f64::max);
    println!();
    println!(
        "connect + initial version to all clients: {:.1} s",
        connect_time.as_secs_f64()
    );
    println!(
        "server RSS idle {rss_idle} KiB; with clients {rss_connected} KiB ({:.1} KiB per client); after the changes {rss_after_changes} KiB ({:.1} KiB per client); peak {peak} KiB",
        per_client(rss_connected),
        per_client(rss_after_changes)
    );
    println!(
        "server CPU during the run: {:.2} s; per update (mean of {} changes, to 1 s after the last arrival): {cpu_per_update:.3} s",
        cpu_end - cpu_start,
        rows.len()
    );
    println!(
        "summary: mode={:?} clients={} per_connection={} endpoints={} clusters={} kib_per_client={:.1} kib_per_client_after={:.1} cpu_per_update_s={cpu_per_update:.3} worst_p99_ms={worst_p99:.0}",
        args.mode,
        args.clients,
        args.per_connection,
        args.endpoints,
        args.clusters,
        per_client(rss_connected),
        per_client(rss_after_changes)
    );
    println!(
        "encodes during {} changes of {} cluster(s): {} (one per changed cluster version is {})",
        args.changes,
        args.changed,
        encodes_after.saturating_sub(encodes_before),
        args.changes * args.changed
    );
    let _ = std::fs::remove_dir_all(&directory);
    Ok(())
}

async fn wait_for_server(url: &str) -> anyhow::Result<InspectClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = InspectClient::connect(url.to_string()).await {
            return Ok(client);
        }
        if Instant::now() > deadline {
            bail!("adaptive-eds did not start; see its log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
