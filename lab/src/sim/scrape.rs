//! A scraped metric pipeline in the simulator: counters scraped on a grid, `rate()` over a window.

use super::endpoint::Mark;
use std::collections::VecDeque;
use std::time::Duration;

/// How the weight provider's samples are made: each endpoint's counters are scraped every
/// `interval`, and a sample is the rate between the first and the last scrape within
/// `rate_window` before the query (PromQL `rate(x[window])` on a store scraping every
/// `interval`, or the server's own `rate_window` over remote-written scrapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrape {
    /// Scrape interval.
    pub interval: Duration,
    /// Window of the counter rates.
    pub rate_window: Duration,
}

/// The scrapes kept for the rate window.
#[derive(Debug, Default)]
pub struct ScrapeHistory {
    scrapes: VecDeque<(u64, Vec<Mark>)>,
}

/// Per endpoint, busy cores, completions and errors per second between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Busy servers (cores in use).
    pub cpu_cores: f64,
    /// Completed requests per second (errors included).
    pub requests_per_second: f64,
    /// Errors per second.
    pub errors_per_second: f64,
}

impl ScrapeHistory {
    /// Keeps one scrape at `now` (ns), dropping those older than `keep` (ns) before it.
    pub fn record(&mut self, now: u64, marks: Vec<Mark>, keep: u64) {
        self.scrapes.push_back((now, marks));
        while self
            .scrapes
            .front()
            .is_some_and(|(time, _)| *time + keep < now)
        {
            self.scrapes.pop_front();
        }
    }

    /// The rates a query at `query` (ns) over `window` (ns) sees: between the first and last
    /// scrapes in `(query - window, query]`; `None` with fewer than two (PromQL gives nothing).
    pub fn rates(&self, query: u64, window: u64) -> Option<Vec<Rates>> {
        let inside = |time: u64| time <= query && time + window > query;
        let first = self.scrapes.iter().find(|(time, _)| inside(*time))?;
        let last = self.scrapes.iter().rev().find(|(time, _)| inside(*time))?;
        if last.0 <= first.0 {
            return None;
        }
        let seconds = (last.0 - first.0) as f64 / 1e9;
        Some(
            first
                .1
                .iter()
                .zip(&last.1)
                .map(|(start, end)| Rates {
                    cpu_cores: end.busy_area.saturating_sub(start.busy_area) as f64 / 1e9 / seconds,
                    requests_per_second: end.completed.saturating_sub(start.completed) as f64
                        / seconds,
                    errors_per_second: end.errors.saturating_sub(start.errors) as f64 / seconds,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn mark(seconds_busy: u128, completed: u64) -> Vec<Mark> {
        vec![Mark {
            busy_area: seconds_busy * u128::from(SECOND),
            completed,
            errors: completed / 10,
        }]
    }

    #[test]
    fn a_rate_spans_the_scrapes_inside_the_window() {
        let mut history = ScrapeHistory::default();
        // Scrapes every 15 s; from 30 s on, 2 busy cores and 100 rps (before: idle).
        for (index, time) in [0, 15, 30, 45, 60, 75].iter().enumerate() {
            let busy = if index < 2 { 0 } else { 2 * (time - 30) };
            let done = if index < 2 { 0 } else { 100 * (time - 30) };
            history.record(time * SECOND, mark(u128::from(busy), done), 120 * SECOND);
        }
        assert!(
            history.rates(10 * SECOND, 60 * SECOND).is_none(),
            "one scrape"
        );
        // Query at 80 s over 60 s: scrapes 30, 45, 60, 75 (the first after the window start).
        let rates = history.rates(80 * SECOND, 60 * SECOND).unwrap();
        assert!((rates[0].cpu_cores - 2.0).abs() < 1e-9, "{rates:?}");
        assert!((rates[0].requests_per_second - 100.0).abs() < 1e-9);
        assert!((rates[0].errors_per_second - 10.0).abs() < 1e-9);
        // At 50 s the window holds 0, 15, 30, 45: the change is half seen.
        let half = history.rates(50 * SECOND, 60 * SECOND).unwrap();
        assert!((half[0].cpu_cores - 30.0 / 45.0).abs() < 1e-9, "{half:?}");
        history.record(200 * SECOND, mark(0, 0), 120 * SECOND);
        assert_eq!(history.scrapes.len(), 1, "older scrapes dropped");
    }
}
