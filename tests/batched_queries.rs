//! The batched PromQL pull against a real VictoriaMetrics: Services discovered through the
//! recorded Kubernetes API share the query templates; VictoriaMetrics' own request counter shows
//! one query per template per tick (not one per cluster), and the samples and weights equal
//! those of a second server querying each cluster separately (`metrics.prometheus.batch: false`)
//! in the same run, against the same store.

mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use adaptive_eds::inspect::pb::{
    inspect_client::InspectClient, GetClusterRequest, ListClustersRequest,
};
use serde_json::json;
use support::fake_kube_api::{self as api, FakeKubeApi, SERVICES, SLICES};
use support::{free_port, http_get, require_tool, wait_for, Server};

/// Services per namespace: a namespace's clusters share its value in every query, and each
/// brings its own `container` (the Service name), as the Kubernetes source fills them.
const SERVICES_PER_NAMESPACE: usize = 10;

/// The query templates both servers use: the default `cpu_query` and the request rate and CPU
/// limit the issue counts (three queries per cluster per tick without batching).
const TEMPLATES: &str = r#"    rps_query: 'sum(rate(http_requests_total{namespace="${namespace}"}[1m])) by (pod)'
    cpu_limit_query: 'sum(kube_pod_container_resource_limits{namespace="${namespace}",container="${container}",resource="cpu"}) by (pod)'
"#;
const TEMPLATE_COUNT: u64 = 3;

/// Service `index`: namespace, name, and its two pods' CPU cores and requests per second.
///
/// Values are dyadic and the exporter stamps whole seconds, so every counter's rate is exact
/// whatever instant a query is evaluated at: the two servers, which query at different moments,
/// must read exactly the same numbers.
fn service(index: usize) -> (String, String, [(String, f64, f64); 2]) {
    let namespace = format!("team-{:02}", index / SERVICES_PER_NAMESPACE);
    let name = format!("svc-{index:03}");
    let pods = [
        (format!("{name}-a"), 0.25, 64.0),
        (format!("{name}-b"), 0.5 + 0.25 * (index % 3) as f64, 32.0),
    ];
    (namespace, name, pods)
}

/// One HTTP server on loopback exporting the counters of every Service's pods (cAdvisor's CPU,
/// the application's requests, kube-state-metrics' limits) with explicit timestamps.
struct Exporter {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    async fn start(services: usize) -> Self {
        let page = move || {
            let seconds = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0);
            let stamp = seconds * 1000;
            let seconds = seconds as f64;
            let mut page = String::with_capacity(services * 800);
            for index in 0..services {
                let (namespace, name, pods) = service(index);
                for (pod, cores, rps) in &pods {
                    page.push_str(&format!(
                        "container_cpu_usage_seconds_total{{namespace=\"{namespace}\",container=\"{name}\",pod=\"{pod}\"}} {} {stamp}\n\
                         http_requests_total{{namespace=\"{namespace}\",pod=\"{pod}\",code=\"200\"}} {} {stamp}\n\
                         kube_pod_container_resource_limits{{namespace=\"{namespace}\",container=\"{name}\",pod=\"{pod}\",resource=\"cpu\",unit=\"core\"}} 2 {stamp}\n\
                         kube_pod_container_resource_limits{{namespace=\"{namespace}\",container=\"{name}\",pod=\"{pod}\",resource=\"memory\",unit=\"byte\"}} 4e9 {stamp}\n",
                        cores * seconds,
                        rps * seconds,
                    ));
                }
            }
            page
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind exporter");
        let address = listener.local_addr().expect("exporter address");
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { page() }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, task }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real VictoriaMetrics single node scraping the exporter every second with its timestamps
/// (`honor_timestamps`); killed and reaped on drop.
struct Victoria {
    port: u16,
    child: Child,
    log: PathBuf,
    _directory: tempfile::TempDir,
}

impl Victoria {
    async fn start(target: std::net::SocketAddr) -> Self {
        let binary = require_tool("victoria-metrics", "apt-get install victoria-metrics");
        let directory = tempfile::tempdir().expect("tempdir");
        let scrape = directory.path().join("scrape.yaml");
        std::fs::write(
            &scrape,
            format!("scrape_configs:\n  - job_name: exporter\n    scrape_interval: 1s\n    honor_timestamps: true\n    static_configs:\n      - targets: [\"{target}\"]\n"),
        )
        .expect("write scrape config");
        let port = free_port();
        let log = directory.path().join("victoria.log");
        let file = std::fs::File::create(&log).expect("create log");
        let child = Command::new(binary)
            .arg(format!(
                "-storageDataPath={}",
                directory.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg("-search.latencyOffset=1s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=WARN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("start victoria-metrics");
        let victoria = Self {
            port,
            child,
            log,
            _directory: directory,
        };
        let health = format!("http://127.0.0.1:{port}/health");
        wait_for(Duration::from_secs(20), "VictoriaMetrics /health", || {
            let health = health.clone();
            async move { http_get(&health).await.filter(|(status, _)| *status == 200) }
        })
        .await;
        victoria
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Instant queries VictoriaMetrics has answered so far (its own counter).
    async fn queries(&self) -> u64 {
        let (_, text) = http_get(&format!("{}/metrics", self.url()))
            .await
            .expect("VictoriaMetrics /metrics");
        counter(&text, "vm_http_requests_total{path=\"/api/v1/query\"}")
            .expect("vm_http_requests_total for /api/v1/query")
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                eprintln!("victoria-metrics log:\n{}", support::tail(&log, 30));
            }
        }
    }
}

/// The value of the sample whose name and labels are exactly `series` in a text exposition.
fn counter(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// A fake API server listing `services` selected Services, each with two ready pods.
async fn kube_api(services: usize) -> FakeKubeApi {
    let api = FakeKubeApi::start().await;
    let mut items = Vec::new();
    let mut slices = Vec::new();
    for index in 0..services {
        let (namespace, name, pods) = service(index);
        items.push(api::service(
            &namespace,
            &name,
            80,
            json!({ "adaptive-eds.io/enabled": "true" }),
            "90",
        ));
        // One slice per pod so both can live on 127.0.0.1 (nothing connects to them).
        for (offset, (pod, _, _)) in pods.iter().enumerate() {
            slices.push(api::slice(
                &namespace,
                &format!("{name}-{offset}"),
                &name,
                9001 + offset as u16,
                &[api::ready("127.0.0.1", pod, "z1")],
                "95",
            ));
        }
    }
    api.push_list(SERVICES, 200, api::list("ServiceList", "v1", "100", items));
    api.push_list(
        SLICES,
        200,
        api::list("EndpointSliceList", "discovery.k8s.io/v1", "100", slices),
    );
    api
}

/// A server discovering every Service from `api`, pulling from `victoria` every `tick`.
async fn server(
    api: &FakeKubeApi,
    directory: &std::path::Path,
    victoria: &Victoria,
    tick: Duration,
    batch: bool,
) -> Server {
    let kubeconfig = api.write_kubeconfig(directory);
    Server::start(&format!(
        "tick: {}ms\nmetrics:\n  prometheus:\n    url: {}\n    batch: {batch}\n    timeout: 20s\n{TEMPLATES}weighting: {{ algorithm: capacity, objective: latency, stale_after: 60s, fallback_after: 120s }}\nkubernetes:\n  enabled: true\n  kubeconfig: \"{}\"\n  selector: {{ label: adaptive-eds.io/enabled, value: \"true\" }}\n  naming: plain\n",
        tick.as_millis(),
        victoria.url(),
        kubeconfig.display()
    ))
    .await
}

/// Every endpoint of every cluster: (pod, weight, cpu, rps, utilization).
type View = BTreeMap<String, Vec<(String, u32, Option<f64>, Option<f64>, Option<f64>)>>;

async fn view(server: &Server) -> View {
    let mut inspect = InspectClient::connect(server.xds_url())
        .await
        .expect("connect Inspect");
    let names: Vec<String> = inspect
        .list_clusters(ListClustersRequest {})
        .await
        .expect("ListClusters")
        .into_inner()
        .clusters
        .into_iter()
        .map(|cluster| cluster.name)
        .collect();
    let mut view = View::new();
    for name in names {
        let cluster = inspect
            .get_cluster(GetClusterRequest { name: name.clone() })
            .await
            .expect("GetCluster")
            .into_inner();
        let mut endpoints: Vec<_> = cluster
            .endpoints
            .into_iter()
            .map(|endpoint| {
                (
                    endpoint.pod,
                    endpoint.weight,
                    endpoint.cpu_cores,
                    endpoint.requests_per_second,
                    endpoint.utilization,
                )
            })
            .collect();
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        view.insert(name, endpoints);
    }
    view
}

/// Whether every one of `services` clusters has both pods with a CPU, rate and limit sample.
fn complete(view: &View, services: usize) -> bool {
    view.len() == services
        && view.values().all(|endpoints| {
            endpoints.len() == 2
                && endpoints.iter().all(|(_, _, cpu, rps, utilization)| {
                    cpu.is_some() && rps.is_some() && utilization.is_some()
                })
        })
}

/// This server's pulls so far: the CPU query results of one of its clusters (one per tick).
async fn pulls(server: &Server) -> u64 {
    let (_, text) = http_get(&server.admin_url("/metrics"))
        .await
        .expect("our /metrics");
    counter(
        &text,
        "adaptive_eds_metric_queries_total{cluster=\"svc-000.team-00:80\",signal=\"cpu\",result=\"ok\"}",
    )
    .unwrap_or(0)
}

/// Waits for the next pull of `server` to finish, then reads VictoriaMetrics' query counter: the
/// pull's queries have all been answered (its results are counted after its last answer) and
/// the next pull is a tick away.
async fn after_a_pull(server: &Server, victoria: &Victoria) -> (u64, u64) {
    let before = pulls(server).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = pulls(server).await;
        if now > before {
            return (now, victoria.queries().await);
        }
        assert!(Instant::now() < deadline, "no pull within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queries VictoriaMetrics answered per pull of `server` over `ticks` pulls (it must be the only
/// client querying it meanwhile).
async fn queries_per_tick(server: &Server, victoria: &Victoria, ticks: u64) -> f64 {
    let (first_pull, first_queries) = after_a_pull(server, victoria).await;
    let mut last = (first_pull, first_queries);
    while last.0 < first_pull + ticks {
        last = after_a_pull(server, victoria).await;
    }
    (last.1 - first_queries) as f64 / (last.0 - first_pull) as f64
}

/// Waits until both servers show the same weights for every cluster, then returns both views.
async fn converged(batched: &Server, separate: &Server, services: usize) -> (View, View) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (one, other) = (view(batched).await, view(separate).await);
        if complete(&one, services) && one == other {
            return (one, other);
        }
        if Instant::now() >= deadline {
            let differing: Vec<_> = one
                .iter()
                .filter(|(name, endpoints)| other.get(*name) != Some(endpoints))
                .take(3)
                .map(|(name, endpoints)| (name, endpoints, other.get(name)))
                .collect();
            panic!(
                "batched and per-cluster views still differ after 90 s ({} vs {} clusters): {differing:?}",
                one.len(),
                other.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A batched query's regex, as VictoriaMetrics reads it: `team.00` escaped matches only itself,
/// not `team-00` (which an unescaped `.` would), and values with regex characters sit beside
/// plain ones in one alternation.
async fn escaping_holds_in_victoria_metrics(victoria: &Victoria) {
    use adaptive_eds::config::metrics::{JoinBy, PullSettings, TlsConfig, DEFAULT_CPU_QUERY};
    use adaptive_eds::config::promql;
    let client = adaptive_eds::metrics::prometheus::PromQlClient::new(PullSettings {
        url: victoria.url(),
        timeout: Duration::from_secs(10),
        headers: BTreeMap::new(),
        tls: TlsConfig::default(),
        join_label: "pod".into(),
        join_by: JoinBy::Pod,
        batch: true,
        failure_watch: true,
    })
    .expect("PromQL client");
    let template = promql::analyze(DEFAULT_CPU_QUERY, "pod").expect("batchable");
    let query = |namespaces: &[&'static str]| {
        template.render(&[
            namespaces.iter().copied().collect(),
            ["svc-000", "svc-001"].into_iter().collect(),
        ])
    };
    let pods = |series: Vec<adaptive_eds::metrics::prometheus::Series>| -> Vec<String> {
        let mut pods: Vec<String> = series
            .into_iter()
            .filter_map(|one| one.labels.get("pod").cloned())
            .collect();
        pods.sort();
        pods
    };
    let plain = wait_for(
        Duration::from_secs(30),
        "CPU rates in VictoriaMetrics",
        || async {
            let series = client.query(&query(&["team-00"])).await.ok()?;
            (series.len() == 4).then_some(series)
        },
    )
    .await;
    assert_eq!(
        pods(plain),
        ["svc-000-a", "svc-000-b", "svc-001-a", "svc-001-b"]
    );
    let dotted = client
        .query(&query(&["team.00", "t(e)a|m+"]))
        .await
        .expect("VictoriaMetrics accepts the escaped regex");
    assert!(dotted.is_empty(), "team.00 matched {:?}", pods(dotted));
}

/// The whole check for `services` discovered Services; returns the queries per tick batched
/// and per cluster.
async fn run(services: usize, tick: Duration, ticks: u64) -> (f64, f64) {
    let exporter = Exporter::start(services).await;
    let victoria = Victoria::start(exporter.address).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let (batched_api, separate_api) = (kube_api(services).await, kube_api(services).await);
    let batched_directory = directory.path().join("batched");
    let separate_directory = directory.path().join("separate");
    std::fs::create_dir_all(&batched_directory).expect("mkdir");
    std::fs::create_dir_all(&separate_directory).expect("mkdir");

    escaping_holds_in_victoria_metrics(&victoria).await;

    let batched = server(&batched_api, &batched_directory, &victoria, tick, true).await;
    wait_for(
        Duration::from_secs(60),
        "every discovered cluster with CPU, rate and limit samples",
        || async { complete(&view(&batched).await, services).then_some(()) },
    )
    .await;
    let batched_per_tick = queries_per_tick(&batched, &victoria, ticks).await;
    eprintln!("{services} clusters, batched: {batched_per_tick:.2} queries per tick");

    // The same Services through a server querying each cluster by itself, in the same run.
    let separate = server(&separate_api, &separate_directory, &victoria, tick, false).await;
    let (one, other) = converged(&batched, &separate, services).await;
    assert_eq!(one, other);
    let pods = one.values().flatten().count();
    assert_eq!(pods, services * 2);
    // Spot-check the values themselves (service 1: pod b uses 0.75 cores at 32 rps).
    let spot = &one["svc-001.team-00:80"];
    assert_eq!(spot[1].0, "svc-001-b");
    assert_eq!(
        (spot[1].2, spot[1].3, spot[1].4),
        (Some(0.75), Some(32.0), Some(0.375))
    );
    eprintln!(
        "{services} clusters: batched and per-cluster samples and weights identical on {pods} endpoints"
    );

    // Killed and reaped: from here on only the per-cluster server queries VictoriaMetrics.
    drop(batched);
    let separate_per_tick = queries_per_tick(&separate, &victoria, 2).await;
    eprintln!("{services} clusters, per cluster: {separate_per_tick:.2} queries per tick");
    drop(separate);
    (batched_per_tick, separate_per_tick)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_discovered_clusters_cost_one_query_per_template_per_tick() {
    let services = 50;
    let (batched, separate) = run(services, Duration::from_secs(2), 5).await;
    assert!(
        batched <= TEMPLATE_COUNT as f64,
        "{batched} queries per tick for {TEMPLATE_COUNT} templates"
    );
    assert_eq!(separate, (services as u64 * TEMPLATE_COUNT) as f64);
}

/// The benchmark of the README (`cargo test --test batched_queries -- --ignored --nocapture`):
/// 500 discovered Services (50 namespaces of 10) sharing the default templates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 500 clusters, about two minutes"]
async fn five_hundred_discovered_clusters_cost_three_queries_per_tick() {
    let services = 500;
    let (batched, separate) = run(services, Duration::from_secs(5), 5).await;
    assert!(batched <= 3.0, "{batched} queries per tick");
    assert_eq!(separate, (services as u64 * TEMPLATE_COUNT) as f64);
}
