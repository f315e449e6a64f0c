//! Latency recording: one histogram for the run and one per report window.

use hdrhistogram::Histogram;

/// Highest latency recorded without clamping: one hour, in microseconds.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Why the latency histograms could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create latency histogram: {0}")]
pub struct HistogramError(#[from] hdrhistogram::CreationError);

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySummary {
    /// Completed requests counted.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Records latencies (microsecond resolution, 3 significant digits).
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    total: Histogram<u64>,
    windows: Vec<Histogram<u64>>,
    empty: Histogram<u64>,
    window_ns: u64,
    warmup_ns: u64,
}

fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// Summarises one histogram.
pub fn summarize(histogram: &Histogram<u64>) -> LatencySummary {
    if histogram.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: histogram.len(),
        mean_ms: histogram.mean() / 1000.0,
        p50_ms: millis(histogram, 0.5),
        p90_ms: millis(histogram, 0.9),
        p99_ms: millis(histogram, 0.99),
        p999_ms: millis(histogram, 0.999),
        max_ms: histogram.max() as f64 / 1000.0,
    }
}

impl LatencyRecorder {
    /// Creates a recorder whose windows are `window_ns` long.
    pub fn new(window_ns: u64) -> Result<Self, HistogramError> {
        let empty = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)?;
        Ok(Self {
            total: empty.clone(),
            windows: Vec::new(),
            empty,
            window_ns: window_ns.max(1),
            warmup_ns: 0,
        })
    }

    /// Leaves requests completed before `warmup_ns` out of the run's summary (windows keep them).
    pub fn with_warmup(mut self, warmup_ns: u64) -> Self {
        self.warmup_ns = warmup_ns;
        self
    }

    /// Records one request that completed at `now_ns` after `latency_ns`.
    pub fn record(&mut self, now_ns: u64, latency_ns: u64) {
        let micros = (latency_ns / 1000).max(1);
        if now_ns >= self.warmup_ns {
            self.total.saturating_record(micros);
        }
        let window = (now_ns / self.window_ns) as usize;
        if self.windows.len() <= window {
            self.windows.resize(window + 1, self.empty.clone());
        }
        self.windows[window].saturating_record(micros);
    }

    /// Summary over the run after the warm-up.
    pub fn total(&self) -> LatencySummary {
        summarize(&self.total)
    }

    /// Summary of each window, padded with empty windows up to `windows`.
    pub fn windows(&self, windows: usize) -> Vec<LatencySummary> {
        (0..windows.max(self.windows.len()))
            .map(|index| self.windows.get(index).map(summarize).unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod warmup_tests {
    use super::*;

    #[test]
    fn the_warm_up_is_left_out_of_the_total_but_not_the_windows() {
        let mut recorder = LatencyRecorder::new(1_000_000_000)
            .unwrap()
            .with_warmup(2_000_000_000);
        recorder.record(1_000_000_000, 50_000_000);
        recorder.record(3_000_000_000, 2_000_000);
        let total = recorder.total();
        assert_eq!(total.count, 1);
        assert!((total.max_ms - 2.0).abs() < 0.01, "{total:?}");
        assert_eq!(recorder.windows(4)[1].count, 1);
    }
}
