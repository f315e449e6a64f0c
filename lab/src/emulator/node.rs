//! One emulated pod: worker slots, service times, slowdown, load accounting.

use super::metrics::{ContainerLabels, NodeMetrics};
use super::precise_timer::PreciseTimer;
use super::recent_load::{LoadReport, RecentLoad};
use crate::fleet::{Failing, Pod};
use crate::service_time::{ServiceTime, ServiceTimeError};
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Length of the window behind the ORCA utilization and rps figures.
pub const ORCA_WINDOW: Duration = Duration::from_secs(1);

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The worker-slot semaphore was closed (the node is shutting down).
    #[error("node {0} is shutting down")]
    Closed(String),
}

/// An emulated pod that serves requests with `cores` worker slots.
#[derive(Debug)]
pub struct Node {
    pod: Pod,
    slots: Semaphore,
    service_time: ServiceTime,
    slowdown_bits: AtomicU64,
    fail_ratio_bits: AtomicU64,
    fail_after_bits: AtomicU64,
    metrics: NodeMetrics,
    recent: RecentLoad,
    timer: PreciseTimer,
    orca: bool,
    orca_eps: bool,
    /// Set by [`Node::stop`]: the pod's server stops (a pod deleted in a rolling restart).
    stop: tokio::sync::watch::Sender<bool>,
}

/// What the HTTP layer needs to answer one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Value of the `endpoint-load-metrics` header, when ORCA is on.
    pub orca_header: Option<String>,
    /// The request was failed fast (answered `503`) instead of served.
    pub failed: bool,
}

/// Records the busy time of a held slot even if the request is cancelled mid-way.
struct BusyGuard<'a> {
    node: &'a Node,
    slot_start: Instant,
    failed: bool,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let busy = now.saturating_duration_since(self.slot_start);
        self.node.metrics.add_busy(busy);
        self.node.recent.record(now, busy, self.failed);
    }
}

impl Node {
    /// Builds a node for `pod`; `orca` turns on the load-report header.
    pub fn new(
        pod: &Pod,
        namespace: &str,
        orca: bool,
        timer: PreciseTimer,
    ) -> Result<Self, ServiceTimeError> {
        let labels = ContainerLabels {
            namespace: namespace.to_owned(),
            pod: pod.name.clone(),
            container: pod.container.clone(),
        };
        Ok(Self {
            pod: pod.clone(),
            slots: Semaphore::new(pod.cores as usize),
            service_time: ServiceTime::new(&pod.service_time)?,
            slowdown_bits: AtomicU64::new(1.0f64.to_bits()),
            fail_ratio_bits: AtomicU64::new(pod.failing.ratio.to_bits()),
            fail_after_bits: AtomicU64::new(pod.failing.after_ms.to_bits()),
            metrics: NodeMetrics::new(labels, pod.cores),
            recent: RecentLoad::new(ORCA_WINDOW),
            timer,
            orca,
            orca_eps: false,
            stop: tokio::sync::watch::channel(false).0,
        })
    }

    /// With `true` (and ORCA on), the header also reports errors per second (`eps`).
    pub fn with_orca_eps(mut self, orca_eps: bool) -> Self {
        self.orca_eps = orca_eps;
        self
    }

    /// Stops this pod's server: it accepts nothing more and ends once open requests are done.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Follows [`Node::stop`] (`true` once stopped).
    pub fn stopped(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Pod name.
    pub fn name(&self) -> &str {
        &self.pod.name
    }

    /// The pod description this node emulates.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Current service-time multiplier.
    pub fn slowdown(&self) -> f64 {
        f64::from_bits(self.slowdown_bits.load(Ordering::Relaxed))
    }

    /// Changes the service-time multiplier for requests that start from now on.
    pub fn set_slowdown(&self, factor: f64) {
        self.slowdown_bits
            .store(factor.to_bits(), Ordering::Relaxed);
        tracing::info!(pod = %self.pod.name, factor, "slowdown changed");
    }

    /// Current fast failure: the share of requests answered `503` and after how long.
    pub fn failing(&self) -> Failing {
        Failing {
            ratio: f64::from_bits(self.fail_ratio_bits.load(Ordering::Relaxed)),
            after_ms: f64::from_bits(self.fail_after_bits.load(Ordering::Relaxed)),
        }
    }

    /// Changes the fast failure for requests that start from now on (ratio 0 recovers).
    ///
    /// The two numbers are stored separately; a request racing the change may see the new
    /// ratio with the old time, which is harmless for an emulator.
    pub fn set_failing(&self, failing: Failing) {
        self.fail_after_bits
            .store(failing.after_ms.to_bits(), Ordering::Relaxed);
        self.fail_ratio_bits
            .store(failing.ratio.to_bits(), Ordering::Relaxed);
        tracing::info!(pod = %self.pod.name, ratio = failing.ratio, after_ms = failing.after_ms, "failing changed");
    }

    /// The node's metric handles.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Load over the recent ORCA window.
    pub fn recent_load(&self) -> LoadReport {
        self.recent.report(Instant::now(), self.pod.cores)
    }

    /// Serves one request: waits for a slot, holds it for a sampled service time, or, for the
    /// failing share, for the failure time only (the work a fast 503 costs is counted as CPU).
    pub async fn serve(&self) -> Result<Answer, NodeError> {
        let arrival = Instant::now();
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| NodeError::Closed(self.pod.name.clone()))?;
        // The thread-local generator is not Send: it must be gone before the await below.
        let (service, failed) = {
            let failing = self.failing();
            let mut random = rand::rng();
            if failing.ratio > 0.0 && random.random::<f64>() < failing.ratio {
                (Duration::from_secs_f64(failing.after_ms / 1000.0), true)
            } else {
                (
                    self.service_time.sample(&mut random, self.slowdown()),
                    false,
                )
            }
        };
        let guard = BusyGuard {
            node: self,
            slot_start: Instant::now(),
            failed,
        };
        self.timer.sleep_until(guard.slot_start + service).await;
        drop(guard);
        drop(permit);
        self.metrics.record_request(arrival.elapsed(), failed);
        // A real backend's ORCA middleware reports on every answer, errors included, and what
        // it usually reports is CPU and request rate: a failing pod reads as an idle, fast one
        // unless the fleet asks for `eps` too.
        let orca_header = self
            .orca
            .then(|| self.recent_load().orca_header_value(self.orca_eps));
        Ok(Answer {
            orca_header,
            failed,
        })
    }
}
