//! End-to-end tests of the `lab` binary; every child process is waited for or killed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `lab` with `args`, killing it if it outlives `limit`; returns (success, stdout).
fn run_lab(args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("lab {args:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    (status.success(), output)
}

#[test]
fn simulate_prints_a_markdown_table() {
    let (success, output) = run_lab(
        &[
            "simulate",
            "--fleet",
            "fleets/seed.yaml",
            "--policy",
            "least_request",
            "--rps",
            "1000",
            "--duration",
            "10s",
            "--seed",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert!(success, "{output}");
    assert!(output.contains("| policy / weights |"), "{output}");
    assert!(
        output.contains("| least_request / none | steady |"),
        "{output}"
    );
    assert!(output.contains("| fib29-0 | 4 |"), "{output}");
}

#[test]
fn emulate_serves_for_the_duration_then_exits() {
    let (success, output) = run_lab(
        &[
            "emulate",
            "--fleet",
            "fleets/seed.yaml",
            "--base-port",
            "0",
            "--duration",
            "1s",
        ],
        Duration::from_secs(30),
    );
    assert!(success, "{output}");
    assert_eq!(output.lines().count(), 15, "{output}");
    assert!(output.starts_with("fib25-0\thttp://127.0.0.1:"), "{output}");
}

#[test]
fn bad_fleet_field_is_reported() {
    let path = std::env::temp_dir().join(format!("lab-bad-fleet-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "namespace: x\ngroups:\n  - name: a\n    replicas: 1\n    cores: 2\n    servce_time: {}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "simulate",
            "--fleet",
            path.to_str().unwrap(),
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("groups[0]") && message.contains("servce_time"),
        "{message}"
    );
}

/// `--load`, `--envoys` and `--pipeline` set up the same cell `lab bench` runs.
#[test]
fn simulate_takes_the_bench_cell_flags() {
    let (success, output) = run_lab(
        &[
            "simulate",
            "--fleet",
            "fleets/seed.yaml",
            "--policy",
            "least_request",
            "--weights",
            "capacity_latency",
            "--load",
            "0.5",
            "--envoys",
            "4",
            "--pipeline",
            "prod",
            "--duration",
            "40s",
        ],
        Duration::from_secs(60),
    );
    assert!(success, "{output}");
    assert!(output.contains("4 clients"), "{output}");
    assert!(
        output.contains("pipeline `prod` (15s scrapes, rates over 60s, tick 10s)"),
        "{output}"
    );
    assert!(output.contains("Offered load 50%"), "{output}");
    assert!(output.contains("service times x10"), "{output}");
}

/// The default matrix and its run-time estimate, as the README gives them.
#[test]
fn matrix_dry_run_prints_the_cells_and_the_estimate() {
    let (success, output) = run_lab(
        &[
            "matrix",
            "--dry-run",
            "--fleet",
            "fleets/seed.yaml",
            "--scenario-dir",
            "scenarios",
        ],
        Duration::from_secs(30),
    );
    assert!(success, "{output}");
    assert!(output.starts_with("25 cells x 4 policies:"), "{output}");
    assert!(output.contains("load30-fast-k1-load-rises"), "{output}");
    assert!(
        output.contains("estimated run time: 2 h 56 min"),
        "{output}"
    );
}

/// A tick that is not whole seconds is refused before anything starts.
#[test]
fn bench_refuses_a_fractional_tick() {
    let results = std::env::temp_dir().join(format!("lab-bench-tick-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "bench",
            "--fleet",
            "fleets/seed.yaml",
            "--pipeline",
            "stream-prod",
            "--tick",
            "1500ms",
            "--results",
            results.to_str().unwrap(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("--tick must be whole seconds, at least 1, not 1.5s"),
        "{message}"
    );
    assert!(!results.exists(), "nothing is written for a refused run");
}
