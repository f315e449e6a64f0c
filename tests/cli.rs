//! The `check` command: exit 0 for a valid config, exit 1 listing every problem with its field.

mod support;

use std::process::Command;

use support::repo_path;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adaptive-eds"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run adaptive-eds check")
}

#[test]
fn the_shipped_example_is_valid() {
    let output = check(&repo_path("deploy/examples/static.yaml"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid (2 clusters, 4 endpoints)"));
}

#[test]
fn every_problem_is_listed_and_the_exit_code_is_one() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("bad.yaml");
    std::fs::write(
        &path,
        "clusters:\n  - name: a\n    endpoints:\n      - { address: 10.0.0.1, port: 0 }\n      - { address: nope, port: 80, weight: 0 }\n  - name: a\n",
    )
    .expect("write");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}: clusters[0].endpoints[0].port: expected 1..65535, got 0"),
        format!("{file}: clusters[0].endpoints[1].address: expected an IPv4 or IPv6 address, got \"nope\""),
        format!("{file}: clusters[0].endpoints[1].weight: expected 1..4294967295, got 0"),
        format!("{file}: clusters[1].name: duplicate cluster name \"a\" (first defined at clusters[0])"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}

#[test]
fn a_missing_file_and_bad_yaml_are_reported() {
    let output = check(std::path::Path::new("/nonexistent/config.yaml"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("/nonexistent/config.yaml: cannot read the file"));

    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("broken.yaml");
    std::fs::write(&path, "clusters: [ { name: a, endpoints: [ }\n").expect("write");
    let output = check(&path);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("broken.yaml"));
}

#[test]
fn capacity_without_an_error_signal_is_valid_with_a_warning() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("capacity.yaml");
    let cluster = "clusters:\n  - name: a\n    namespace: shop\n    container: web\n    endpoints: [{ address: 10.0.0.1, port: 80, pod: a }]\n";
    std::fs::write(
        &path,
        format!("metrics: {{ prometheus: {{ url: \"http://127.0.0.1:8428\" }} }}\n{cluster}"),
    )
    .expect("write");
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let expected = format!(
        "{}: clusters[0]: warning: algorithm capacity without an error signal: a pod that fails fast",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // With an error signal: no warning.
    std::fs::write(
        &path,
        format!("metrics: {{ remote_write: {{ enabled: true, rps_metric: requests_total, error_labels: {{ code: \"5..\" }} }} }}\n{cluster}"),
    )
    .expect("write");
    let output = check(&path);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_the_same_warning_at_startup() {
    // Nothing listens on the metrics port: queries fail (and are counted); serving goes on.
    let metrics = format!(
        "metrics: {{ prometheus: {{ url: \"http://127.0.0.1:{}\", timeout: 200ms }} }}\n",
        support::free_port()
    );
    let cluster = "clusters:\n  - name: a\n    namespace: shop\n    container: web\n    endpoints: [{ address: 127.0.0.1, port: 9, pod: a }]\n";
    let mut server = support::Server::start(&format!("{metrics}{cluster}")).await;
    let warning = "algorithm capacity without an error signal";
    let log = support::wait_for(
        std::time::Duration::from_secs(10),
        "the warning in the log",
        || {
            let log = server.process.log();
            async move { log.contains(warning).then_some(log) }
        },
    )
    .await;
    let line = log
        .lines()
        .find(|line| line.contains(warning))
        .expect("warning line");
    assert!(
        line.contains("WARN") && line.contains("clusters[0]"),
        "{line}"
    );
    server.process.assert_running();
}
