//! A simulated endpoint: a FIFO queue in front of `cores` identical servers, optionally
//! answering a share of its requests with a fast error.

use super::cswrr::OrcaReport;
use crate::fleet::Pod;
use crate::service_time::{ServiceTime, ServiceTimeError};
use rand::Rng;
use std::collections::VecDeque;

/// A request waiting for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Arrival time, nanoseconds from the start.
    pub arrival_ns: u64,
    /// Client that sent it.
    pub client: u32,
}

/// Counters read at two times to get rates over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Busy server-nanoseconds so far.
    pub busy_area: u128,
    /// Completed requests so far (errors included).
    pub completed: u64,
    /// Of those, answered with an error (failed fast).
    pub errors: u64,
}

/// One service: how long it holds a server and whether it ends in an error.
#[derive(Debug, Clone, Copy)]
struct Service {
    ns: u64,
    failed: bool,
}

fn millis_to_ns(millis: f64) -> u64 {
    (millis * 1e6).max(0.0) as u64
}

/// Queue and servers of one endpoint, with busy-time accounting.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod name.
    pub name: String,
    /// Servers.
    pub cores: u32,
    /// Mean service time including the tail, milliseconds (for reports and oracles).
    pub mean_ms: f64,
    service_time: ServiceTime,
    slowdown: f64,
    fail_ratio: f64,
    fail_ns: u64,
    busy: u32,
    queue: VecDeque<Waiting>,
    busy_area: u128,
    last_change_ns: u64,
    completed: u64,
    errors: u64,
    orca: OrcaReport,
    orca_mark: Mark,
    report_eps: bool,
}

impl Endpoint {
    /// Builds an idle endpoint for `pod`.
    pub fn new(pod: &Pod) -> Result<Self, ServiceTimeError> {
        Ok(Self {
            name: pod.name.clone(),
            cores: pod.cores,
            mean_ms: pod.service_time.overall_mean_ms(),
            service_time: ServiceTime::new(&pod.service_time)?,
            slowdown: 1.0,
            fail_ratio: pod.failing.ratio,
            fail_ns: millis_to_ns(pod.failing.after_ms),
            busy: 0,
            queue: VecDeque::new(),
            busy_area: 0,
            last_change_ns: 0,
            completed: 0,
            errors: 0,
            orca: OrcaReport::default(),
            orca_mark: Mark::default(),
            report_eps: false,
        })
    }

    fn integrate(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_change_ns);
        self.busy_area += u128::from(self.busy) * u128::from(elapsed);
        self.last_change_ns = now_ns;
    }

    /// How long the next service holds a server, and whether it is a fast failure.
    ///
    /// The failure draw is only made when the endpoint can fail, so fleets without failing
    /// pods keep the random stream (and the results) they had before failures existed.
    fn service<R: Rng>(&self, random: &mut R) -> Service {
        if self.fail_ratio > 0.0 && random.random::<f64>() < self.fail_ratio {
            return Service {
                ns: self.fail_ns,
                failed: true,
            };
        }
        Service {
            ns: (self.service_time.sample_seconds(random) * self.slowdown * 1e9) as u64,
            failed: false,
        }
    }

    /// A request arrives; returns its completion time (and whether it fails) if a server was free.
    pub fn arrive<R: Rng>(
        &mut self,
        now_ns: u64,
        request: Waiting,
        random: &mut R,
    ) -> Option<(u64, bool)> {
        if self.busy < self.cores {
            self.integrate(now_ns);
            self.busy += 1;
            let service = self.service(random);
            Some((now_ns + service.ns, service.failed))
        } else {
            self.queue.push_back(request);
            None
        }
    }

    /// A server finishes a request (`failed`: answered with an error); returns the next queued
    /// request, its completion time and whether it fails, if any.
    pub fn complete<R: Rng>(
        &mut self,
        now_ns: u64,
        failed: bool,
        random: &mut R,
    ) -> Option<(Waiting, u64, bool)> {
        self.completed += 1;
        if failed {
            self.errors += 1;
        }
        match self.queue.pop_front() {
            Some(next) => {
                let service = self.service(random);
                Some((next, now_ns + service.ns, service.failed))
            }
            None => {
                self.integrate(now_ns);
                self.busy = self.busy.saturating_sub(1);
                None
            }
        }
    }

    /// Busy area and completions up to `now_ns`.
    pub fn mark(&mut self, now_ns: u64) -> Mark {
        self.integrate(now_ns);
        Mark {
            busy_area: self.busy_area,
            completed: self.completed,
            errors: self.errors,
        }
    }

    /// Changes the service-time multiplier for services that start from now on.
    pub fn set_slowdown(&mut self, factor: f64) {
        self.slowdown = factor;
    }

    /// With `true`, the ORCA report also carries errors per second (`eps`).
    pub fn set_report_eps(&mut self, report_eps: bool) {
        self.report_eps = report_eps;
    }

    /// Changes the share of requests failed fast, and the time a failure holds a server, for
    /// services that start from now on (ratio 0 recovers).
    pub fn set_failing(&mut self, ratio: f64, after_ms: f64) {
        self.fail_ratio = ratio;
        self.fail_ns = millis_to_ns(after_ms);
    }

    /// The ORCA report the endpoint attaches to its responses.
    pub fn orca_report(&self) -> OrcaReport {
        self.orca
    }

    /// Closes an ORCA window of `window_ns` ending at `now_ns` and refreshes the report.
    pub fn roll_orca_window(&mut self, now_ns: u64, window_ns: u64) {
        let mark = self.mark(now_ns);
        let seconds = window_ns as f64 / 1e9;
        let busy_seconds = (mark.busy_area - self.orca_mark.busy_area) as f64 / 1e9;
        self.orca = OrcaReport {
            utilization: (busy_seconds / seconds / f64::from(self.cores)).min(1.0),
            requests_per_second: (mark.completed - self.orca_mark.completed) as f64 / seconds,
            errors_per_second: if self.report_eps {
                (mark.errors - self.orca_mark.errors) as f64 / seconds
            } else {
                0.0
            },
        };
        self.orca_mark = mark;
    }
}
