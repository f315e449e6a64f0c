//! What the tests know on top of the `harness` crate: adaptive-eds's configs and binary, the
//! `deploy/envoy/` bootstraps, fake backends and APIs; every process on 127.0.0.1, waited for
//! within a deadline, stopped on drop, with the test's panicking forms of the harness' checks.
#![allow(dead_code)]

pub mod envoy_lrs;
pub mod fake_kube_api;
pub mod traffic;

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

// Each test binary uses a part of the support module.
#[allow(unused_imports)]
pub use harness::tail;

/// Installs rustls' ring provider as the process default: reqwest is built with rustls but no
/// default provider (see Cargo.toml), and the tests' own reqwest clients (traffic through Envoy,
/// the metrics store) need one.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    harness::free_port().unwrap_or_else(|error| panic!("{error:#}"))
}

/// Polls `check` until it returns `Some`; fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    harness::wait_for(timeout, what, check)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// GET a URL on loopback; `None` if it could not connect.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    install_crypto_provider();
    harness::http_get(url).await.ok()
}

/// Finds a tool on PATH, failing the test with the install command when it is missing.
pub fn require_tool(name: &str, install: &str) -> PathBuf {
    harness::require_tool(name, install)
        .unwrap_or_else(|error| panic!("{error:#} (scripts/test does)"))
}

/// A child process (in its own process group) killed and reaped on drop: the harness' process
/// with the failing forms of its checks a test wants.
pub struct Process(harness::Process);

impl Process {
    fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Self {
        Self::started(name, harness::Process::spawn(name, command, &log))
    }

    fn started(name: &str, started: anyhow::Result<harness::Process>) -> Self {
        Self(started.unwrap_or_else(|error| panic!("cannot start {name}: {error:#}")))
    }

    /// Sends a signal (`TERM`, `KILL`, ...) with the system `kill` command.
    pub fn signal(&self, name: &str) {
        self.0
            .signal(name)
            .unwrap_or_else(|error| panic!("{error:#}"));
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Err(error) = self.0.check_running() {
            panic!("{error:#}\nwhole log:\n{}", self.0.log());
        }
    }
}

impl Deref for Process {
    type Target = harness::Process;

    fn deref(&self) -> &harness::Process {
        &self.0
    }
}

impl DerefMut for Process {
    fn deref_mut(&mut self) -> &mut harness::Process {
        &mut self.0
    }
}

/// A running adaptive-eds binary with its own config file.
pub struct Server {
    pub directory: tempfile::TempDir,
    pub config: PathBuf,
    pub xds_port: u16,
    pub admin_port: u16,
    pub process: Process,
}

/// Writes `clusters_yaml` (the `clusters:` section) into a config with free ports.
pub fn write_config(
    directory: &Path,
    xds_port: u16,
    admin_port: u16,
    clusters_yaml: &str,
) -> PathBuf {
    let path = directory.join("config.yaml");
    std::fs::write(&path, config_text(xds_port, admin_port, clusters_yaml)).expect("write config");
    path
}

/// Config text with the given ports and clusters section.
pub fn config_text(xds_port: u16, admin_port: u16, clusters_yaml: &str) -> String {
    format!(
        "xds: {{ listen: \"127.0.0.1:{xds_port}\" }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n{clusters_yaml}"
    )
}

impl Server {
    /// Starts the server binary and waits until `/readyz` answers 200.
    pub async fn start(clusters_yaml: &str) -> Self {
        let directory = tempfile::tempdir().expect("tempdir");
        let (xds_port, admin_port) = (free_port(), free_port());
        let config = write_config(directory.path(), xds_port, admin_port, clusters_yaml);
        let log = directory.path().join("adaptive-eds.log");
        let process = Process::spawn(
            "adaptive-eds",
            Command::new(env!("CARGO_BIN_EXE_adaptive-eds"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "info"),
            log,
        );
        let mut server = Self {
            directory,
            config,
            xds_port,
            admin_port,
            process,
        };
        let url = server.admin_url("/readyz");
        wait_for(Duration::from_secs(20), "adaptive-eds /readyz", || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(status, _)| *status == 200) }
        })
        .await;
        server.process.assert_running();
        server
    }

    /// `http://127.0.0.1:ADMIN/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `http://127.0.0.1:XDS`.
    pub fn xds_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.xds_port)
    }

    /// Replaces the clusters section of the config file.
    pub fn rewrite_clusters(&self, clusters_yaml: &str) {
        std::fs::write(
            &self.config,
            config_text(self.xds_port, self.admin_port, clusters_yaml),
        )
        .expect("rewrite config");
    }

    /// Writes raw text to the config file.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }
}

/// Starts the server binary on `config`, logging into `directory`.
pub fn spawn_server(config: &Path, directory: &Path) -> Process {
    Process::spawn(
        "adaptive-eds",
        Command::new(env!("CARGO_BIN_EXE_adaptive-eds"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info"),
        directory.join("adaptive-eds.log"),
    )
}

/// Waits until the admin port answers `/readyz` with 200.
pub async fn wait_ready(admin_port: u16) {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    wait_for(Duration::from_secs(20), "adaptive-eds /readyz", || {
        let url = url.clone();
        async move { http_get(&url).await.filter(|(status, _)| *status == 200) }
    })
    .await;
}

/// Path of a file in the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A running Envoy started from one of the bootstraps in `deploy/envoy/`.
pub struct Envoy {
    pub admin_port: u16,
    pub listener_port: u16,
    pub directory: tempfile::TempDir,
    pub process: Process,
}

impl Envoy {
    /// Starts Envoy with `deploy/envoy/<bootstrap>`, its ports moved to free ones and its xDS
    /// cluster pointed at `xds_port`; waits until its admin answers.
    pub async fn start(bootstrap: &str, xds_port: u16) -> Self {
        Self::start_with(bootstrap, xds_port, &[]).await
    }

    /// As [`Envoy::start`], also replacing each `(from, to)` text in the bootstrap.
    pub async fn start_with(bootstrap: &str, xds_port: u16, replacements: &[(&str, &str)]) -> Self {
        let text = std::fs::read_to_string(repo_path(&format!("deploy/envoy/{bootstrap}")))
            .expect("read bootstrap");
        let (admin_port, listener_port) = (free_port(), free_port());
        // Each port through a placeholder first: a port picked equal to one of the bootstrap's
        // (admin 10000 from the free range) must not be replaced again by the next rule.
        let ports = [
            ("port_value: 18000", "port_value: @xds@", xds_port),
            ("port_value: 9901", "port_value: @admin@", admin_port),
            ("port_value: 10000", "port_value: @listener@", listener_port),
        ];
        let text = ports.iter().fold(text, |text, (from, placeholder, _)| {
            text.replace(from, placeholder)
        });
        let text = ports.iter().fold(text, |text, (_, placeholder, port)| {
            text.replace(placeholder, &format!("port_value: {port}"))
        });
        let text = replacements
            .iter()
            .fold(text, |text, (from, to)| text.replace(from, to));
        let directory = tempfile::tempdir().expect("tempdir");
        let config = directory.path().join("envoy.yaml");
        std::fs::write(&config, text).expect("write bootstrap");
        // Fails the test with the install command when Envoy is missing.
        require_tool("envoy", harness::envoy::INSTALL);
        install_crypto_provider();
        let log = directory.path().join("envoy.log");
        let mut process = Process::started(
            "envoy",
            harness::envoy::spawn("envoy", &config, &["--log-level", "info"], &log),
        );
        harness::envoy::wait_admin(&mut process, admin_port, Duration::from_secs(30))
            .await
            .unwrap_or_else(|error| panic!("{error:#}\nwhole log:\n{}", process.log()));
        Self {
            admin_port,
            listener_port,
            directory,
            process,
        }
    }

    /// `http://127.0.0.1:ADMIN/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `(address:port, weight)` of every host of `cluster`, sorted, from `/clusters?format=json`;
    /// `None` while Envoy lists no host for it (it leaves the list out of an empty cluster).
    pub async fn hosts(&self, cluster: &str) -> Option<Vec<(String, u64)>> {
        let hosts = harness::envoy::hosts(self.admin_port, cluster).await.ok()?;
        if hosts.is_empty() {
            return None;
        }
        let mut hosts: Vec<(String, u64)> = hosts
            .into_iter()
            .map(|host| {
                (
                    format!("{}:{}", host.address, host.port.unwrap_or_default()),
                    host.weight.unwrap_or(0),
                )
            })
            .collect();
        hosts.sort();
        Some(hosts)
    }

    /// `(address:port, load_balancing_weight)` of `cluster` in `/config_dump?include_eds`, sorted.
    pub async fn dumped_weights(&self, cluster: &str) -> Option<Vec<(String, u64)>> {
        let (_, body) = http_get(&self.admin_url("/config_dump?include_eds")).await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let dump = json["configs"].as_array()?.iter().find(|config| {
            config["@type"] == "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump"
        })?;
        let configs = ["static_endpoint_configs", "dynamic_endpoint_configs"]
            .iter()
            .filter_map(|key| dump[*key].as_array())
            .flatten();
        let assignment = configs
            .map(|config| &config["endpoint_config"])
            .find(|assignment| assignment["cluster_name"] == cluster)?;
        let mut weights: Vec<(String, u64)> = assignment["endpoints"]
            .as_array()?
            .iter()
            .filter_map(|locality| locality["lb_endpoints"].as_array())
            .flatten()
            .map(|endpoint| {
                let socket = &endpoint["endpoint"]["address"]["socket_address"];
                (
                    format!(
                        "{}:{}",
                        socket["address"].as_str().unwrap_or(""),
                        socket["port_value"]
                    ),
                    endpoint["load_balancing_weight"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        weights.sort();
        Some(weights)
    }

    /// Waits until `cluster` has exactly `expected` hosts and weights.
    pub async fn wait_for_hosts(&self, cluster: &str, expected: &[(&str, u64)], timeout: Duration) {
        let mut expected: Vec<(String, u64)> = expected
            .iter()
            .map(|(address, weight)| (address.to_string(), *weight))
            .collect();
        expected.sort();
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            let hosts = self.hosts(cluster).await;
            if hosts.as_ref() == Some(&expected) {
                return;
            }
            last = hosts.or(last);
            if Instant::now() >= deadline {
                panic!(
                    "Envoy's {cluster} hosts after {timeout:?}: {last:?}, expected {expected:?}\nEnvoy log tail:\n{}",
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Test backends on loopback whose `/metrics` counters grow at known rates, like cAdvisor's
/// `container_cpu_usage_seconds_total` for a pod that uses `cores` CPU and serves `rps`.
pub struct FakeBackends {
    pub addresses: Vec<std::net::SocketAddr>,
    errors: Vec<Arc<Mutex<ErrorCounter>>>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One fake pod: name, CPU cores in use, requests per second.
pub struct FakePod {
    pub pod: &'static str,
    pub cores: f64,
    pub rps: f64,
}

/// A fake pod's error counter: `rate` per second since `since` (seconds of its clock), on top
/// of `base` counted before, so a change of rate keeps the counter continuous.
#[derive(Clone, Copy)]
struct ErrorCounter {
    rate: f64,
    since: f64,
    base: f64,
}

impl ErrorCounter {
    fn at(&self, seconds: f64) -> f64 {
        self.base + self.rate * (seconds - self.since).max(0.0)
    }
}

/// The fake pods' clock: seconds since they started, from 1000 (counters far from zero).
fn fake_seconds(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() + 1000.0
}

impl FakeBackends {
    /// Starts one HTTP server per pod; each serves `/metrics` (and `/` with 200 for traffic).
    pub async fn start(
        namespace: &'static str,
        container: &'static str,
        pods: Vec<FakePod>,
    ) -> Self {
        let pods = pods.into_iter().map(|pod| (pod, 0.0)).collect();
        Self::start_failing(namespace, container, pods).await
    }

    /// As [`Self::start`], each pod answering the given requests per second (of its `rps`) with
    /// 503: its request counter has a `code="503"` series at that rate (and none while it has
    /// counted none, as a client library creates a labelled series at its first use), the rest
    /// under `code="200"`; `http_request_errors_total` counts the same errors, and the gauge
    /// `http_requests_in_flight` reads `rps / 100` (10 ms per request, by Little's law).
    pub async fn start_failing(
        namespace: &'static str,
        container: &'static str,
        pods: Vec<(FakePod, f64)>,
    ) -> Self {
        let started = Instant::now();
        let mut addresses = Vec::new();
        let mut counters = Vec::new();
        let mut tasks = Vec::new();
        for (pod, errors) in pods {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            addresses.push(listener.local_addr().expect("backend address"));
            let counter = Arc::new(Mutex::new(ErrorCounter {
                rate: errors,
                since: 0.0,
                base: 0.0,
            }));
            counters.push(counter.clone());
            // The application's own request counter has no `container` label (cAdvisor adds
            // that one to the CPU counter only), as with most instrumented apps.
            let page = move || {
                let seconds = fake_seconds(started);
                let errors = counter.lock().map_or(0.0, |counter| counter.at(seconds));
                let name = pod.pod;
                let failed = if errors > 0.0 {
                    format!(
                        "http_requests_total{{namespace=\"{namespace}\",pod=\"{name}\",code=\"503\"}} {errors}\n"
                    )
                } else {
                    String::new()
                };
                format!(
                    "# TYPE container_cpu_usage_seconds_total counter\n\
                     container_cpu_usage_seconds_total{{namespace=\"{namespace}\",container=\"{container}\",pod=\"{name}\"}} {}\n\
                     # TYPE kube_pod_container_resource_limits gauge\n\
                     kube_pod_container_resource_limits{{namespace=\"{namespace}\",container=\"{container}\",pod=\"{name}\",resource=\"cpu\",unit=\"core\"}} 2\n\
                     kube_pod_container_resource_limits{{namespace=\"{namespace}\",container=\"{container}\",pod=\"{name}\",resource=\"memory\",unit=\"byte\"}} 4e9\n\
                     # TYPE http_requests_total counter\n\
                     http_requests_total{{namespace=\"{namespace}\",pod=\"{name}\",code=\"200\"}} {}\n\
                     {failed}\
                     # TYPE http_request_errors_total counter\n\
                     http_request_errors_total{{namespace=\"{namespace}\",pod=\"{name}\"}} {errors}\n\
                     # TYPE http_requests_in_flight gauge\n\
                     http_requests_in_flight{{namespace=\"{namespace}\",pod=\"{name}\"}} {}\n",
                    pod.cores * seconds,
                    pod.rps * seconds - errors,
                    pod.rps / 100.0,
                )
            };
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || async move { page() }),
                )
                .route("/", axum::routing::get(|| async { "ok" }));
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Self {
            addresses,
            errors: counters,
            started,
            tasks,
        }
    }

    /// From now on pod `index` answers `errors` of its requests per second with 503.
    pub fn set_errors(&self, index: usize, errors: f64) {
        let seconds = fake_seconds(self.started);
        if let Ok(mut counter) = self.errors[index].lock() {
            *counter = ErrorCounter {
                rate: errors,
                since: seconds,
                base: counter.at(seconds),
            };
        }
    }
}

impl Drop for FakeBackends {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A Prometheus scrape config for `targets`, every second.
pub fn scrape_config(directory: &Path, targets: &[std::net::SocketAddr]) -> PathBuf {
    let path = directory.join("scrape.yaml");
    std::fs::write(
        &path,
        harness::victoria::scrape_config("backends", targets, 1),
    )
    .expect("write scrape config");
    path
}

/// A real VictoriaMetrics single node (`apt-get install victoria-metrics`) scraping `targets`.
pub struct VictoriaMetrics {
    pub port: u16,
    pub directory: tempfile::TempDir,
    pub process: Option<Process>,
    scrape: PathBuf,
}

impl VictoriaMetrics {
    /// Starts it and waits until it answers.
    pub async fn start(targets: &[std::net::SocketAddr]) -> Self {
        let directory = tempfile::tempdir().expect("tempdir");
        let scrape = scrape_config(directory.path(), targets);
        let mut victoria = Self {
            port: free_port(),
            directory,
            process: None,
            scrape,
        };
        victoria.restart().await;
        victoria
    }

    /// Starts (again) on the same port and data directory.
    pub async fn restart(&mut self) {
        require_tool("victoria-metrics", harness::victoria::INSTALL);
        let log = self.directory.path().join(format!(
            "victoria-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        self.process = Some(Process::started(
            "victoria-metrics",
            harness::victoria::spawn_victoria_metrics(
                &self.directory.path().join("data"),
                self.port,
                &self.scrape,
                &log,
            ),
        ));
        let url = harness::victoria::health_url(self.port);
        wait_for(Duration::from_secs(20), "VictoriaMetrics /health", || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(status, _)| *status == 200) }
        })
        .await;
    }

    /// Kills it (the data directory stays).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `metrics:` block that pulls the fake pods' CPU, request and 5xx rates over 5 s from
    /// here (`${namespace}` and `${container}` left to adaptive-eds), and then `extra` lines.
    /// While no pod fails, the error query returns no series: every pod reads 0 errors/s and
    /// the cheapest is believed (without an error signal it would only be capped at an equal
    /// share).
    pub fn prometheus_yaml(&self, extra: &str) -> String {
        format!(
            r#"metrics:
  prometheus:
    url: {url}
    cpu_query: 'sum(rate(container_cpu_usage_seconds_total{{namespace="${{namespace}}",container="${{container}}"}}[5s])) by (pod)'
    rps_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}"}}[5s])) by (pod)'
    error_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}",code=~"5.."}}[5s])) by (pod)'
    timeout: 1s
{extra}"#,
            url = self.url()
        )
    }
}

/// A real vmagent scraping `targets` and remote-writing to `write_url`.
pub fn start_vmagent(
    directory: &Path,
    targets: &[std::net::SocketAddr],
    write_url: &str,
) -> Process {
    require_tool("vmagent", harness::victoria::INSTALL);
    let scrape = scrape_config(directory, targets);
    Process::started(
        "vmagent",
        harness::victoria::spawn_vmagent(
            &scrape,
            write_url,
            "1s",
            &directory.join("vmagent-data"),
            free_port(),
            &directory.join("vmagent.log"),
        ),
    )
}

/// A server running inside the test process on ephemeral ports.
pub struct InProcess {
    _directory: tempfile::TempDir,
    pub config: PathBuf,
    pub url: String,
    pub admin_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts with `clusters` (the rest of the config after `xds`/`admin`).
    pub async fn start(clusters: &str) -> Self {
        Self::start_with("", clusters).await
    }

    /// Starts with extra `xds:` keys (e.g. `max_streams: 2`) and the rest of the config.
    pub async fn start_with(xds_keys: &str, clusters: &str) -> Self {
        let directory = tempfile::tempdir().expect("tempdir");
        let config = directory.path().join("config.yaml");
        std::fs::write(&config, format!("xds: {{ listen: \"127.0.0.1:0\" {xds_keys} }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{clusters}"))
            .expect("write config");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_sender, bound) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(adaptive_eds::server::serve(
            config.clone(),
            async move {
                let _ = stopped.await;
            },
            move |bound| {
                let _ = bound_sender.send(bound);
            },
        ));
        let bound = tokio::time::timeout(Duration::from_secs(5), bound)
            .await
            .expect("server bound in time")
            .expect("bound");
        Self {
            _directory: directory,
            config,
            url: format!("http://{}", bound.xds),
            admin_url: format!("http://{}", bound.admin),
            stop: Some(stop),
            task,
        }
    }

    /// Rewrites the config (without extra xds keys).
    pub fn rewrite(&self, clusters: &str) {
        std::fs::write(&self.config, format!("xds: {{ listen: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{clusters}"))
            .expect("rewrite config");
    }

    /// A new connection to the gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// Stops the server and checks it ran cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops in time");
        result.expect("task").expect("server ran cleanly");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}
