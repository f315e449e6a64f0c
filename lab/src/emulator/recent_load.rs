//! Load over a recent sliding window, for the ORCA utilization and rps report.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Number of buckets in the sliding window.
const BUCKETS: usize = 10;

/// Busy time and request count over roughly the last `window`, kept in ten buckets.
#[derive(Debug)]
pub struct RecentLoad {
    origin: Instant,
    bucket_width: Duration,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    busy_seconds: f64,
    requests: u64,
    errors: u64,
}

/// Load seen over the recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadReport {
    /// Busy slot-seconds per second divided by cores (0..=1).
    pub utilization: f64,
    /// Requests completed per second (errors included).
    pub requests_per_second: f64,
    /// Of those, requests answered with an error, per second.
    pub errors_per_second: f64,
}

impl RecentLoad {
    /// Creates a window of about `window` length, starting now.
    pub fn new(window: Duration) -> Self {
        let bucket_width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            origin: Instant::now(),
            bucket_width,
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_width.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records one completed request that held a slot for `busy` (`failed`: answered an error).
    pub fn record(&self, now: Instant, busy: Duration, failed: bool) {
        let index = self.bucket_index(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.busy_seconds += busy.as_secs_f64();
        bucket.requests += 1;
        bucket.errors += u64::from(failed);
    }

    /// Load over the buckets still inside the window at `now`, for a node of `cores`.
    pub fn report(&self, now: Instant, cores: u32) -> LoadReport {
        let current = self.bucket_index(now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        let (busy_seconds, requests, errors) = {
            let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            buckets
                .iter()
                .filter(|bucket| (oldest..=current).contains(&bucket.index))
                .fold((0.0, 0, 0), |(busy, count, errors), bucket| {
                    (
                        busy + bucket.busy_seconds,
                        count + bucket.requests,
                        errors + bucket.errors,
                    )
                })
        };
        let since_origin = now.saturating_duration_since(self.origin);
        let window = (self.bucket_width * (BUCKETS as u32 - 1)
            + Duration::from_nanos(
                (since_origin.as_nanos() % self.bucket_width.as_nanos()) as u64,
            ))
        .min(since_origin)
        .as_secs_f64()
        .max(1e-3);
        LoadReport {
            utilization: (busy_seconds / (window * f64::from(cores.max(1)))).min(1.0),
            requests_per_second: requests as f64 / window,
            errors_per_second: errors as f64 / window,
        }
    }
}

impl LoadReport {
    /// Formats the report as Envoy's native ORCA header value (`endpoint-load-metrics`);
    /// with `eps`, the errors per second too.
    pub fn orca_header_value(&self, eps: bool) -> String {
        let mut text = format!(
            "TEXT cpu_utilization:{:.4},rps_fractional:{:.2}",
            self.utilization, self.requests_per_second
        );
        if eps {
            text.push_str(&format!(",eps:{:.2}", self.errors_per_second));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_divides_busy_time_by_window_and_cores() {
        let load = RecentLoad::new(Duration::from_secs(1));
        let start = load.origin;
        for step in 0..100u32 {
            load.record(
                start + Duration::from_millis(u64::from(step) * 10),
                Duration::from_millis(20),
                step % 4 == 0,
            );
        }
        let report = load.report(start + Duration::from_millis(999), 4);
        // Ten buckets of 100 ms: the window at 999 ms is 999 ms long and holds all 100 requests.
        assert!(
            (report.requests_per_second - 100.1).abs() < 1.0,
            "{report:?}"
        );
        assert!((report.utilization - 0.5).abs() < 0.01, "{report:?}");
        let later = load.report(start + Duration::from_secs(5), 4);
        assert_eq!(later.requests_per_second, 0.0);
        assert!((report.errors_per_second - 25.0).abs() < 1.0, "{report:?}");
        assert_eq!(
            report.orca_header_value(false).split(',').count(),
            2,
            "two fields in the header"
        );
        assert!(
            report.orca_header_value(true).ends_with(",eps:25.03"),
            "{}",
            report.orca_header_value(true)
        );
    }
}
