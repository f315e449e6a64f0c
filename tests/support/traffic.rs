//! Traffic for tests that measure balancing: backends whose fast failure can be switched on,
//! and closed-loop clients sending through an Envoy listener.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Backends whose failure can be switched on and off: while failing, one answers at once with
/// 503 (a fast failure, the case CPU-per-request signals read as the cheapest pod).
pub struct SwitchableBackends {
    pub ports: Vec<u16>,
    pub failing: Vec<Arc<AtomicBool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SwitchableBackends {
    pub async fn start(count: usize, delay: Duration) -> Self {
        let (mut ports, mut failing, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            ports.push(listener.local_addr().expect("backend address").port());
            let switch = Arc::new(AtomicBool::new(false));
            failing.push(Arc::clone(&switch));
            let app = axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let switch = Arc::clone(&switch);
                    async move {
                        if switch.load(Ordering::Relaxed) {
                            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "failing");
                        }
                        tokio::time::sleep(delay).await;
                        (axum::http::StatusCode::OK, "ok")
                    }
                }),
            );
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Self {
            ports,
            failing,
            tasks,
        }
    }
}

impl Drop for SwitchableBackends {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Closed-loop traffic: `workers` clients each sending one request at a time to `port`, until
/// `stop` is set or `limit` passes.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Traffic {
    pub fn start(port: u16, workers: usize, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let tasks = (0..workers)
            .map(|_| {
                let (stop, client) = (Arc::clone(&stop), client.clone());
                tokio::spawn(async move {
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let _ = client.get(format!("http://127.0.0.1:{port}/")).send().await;
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for task in self.tasks {
            sent += task.await.unwrap_or(0);
        }
        sent
    }
}
