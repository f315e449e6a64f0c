//! The queueing model the `latency` plan minimizes: each endpoint an M/M/c queue with `c` its
//! CPU limit and its cost per request as the service time, waiting from Sakasegawa's formula.

/// The highest utilization the model is asked about: the waiting time diverges at 1.
pub(crate) const MAX_MODELLED_UTILIZATION: f64 = 0.99;

/// Newton steps (each with a bisection fallback) to invert the marginal latency; the answer is
/// within 1e-12 in a handful for every limit from 0.001 to 10^6 cores.
const INVERSION_STEPS: usize = 60;

/// One endpoint (or a group of alike ones) as a queue.
///
/// With utilization `u`, Sakasegawa's approximation of an M/M/c queue gives `u^b / (1 - u)`
/// requests waiting, `b = sqrt(2 (c + 1))` (exact for c = 1; 2% above Erlang C at c = 4,
/// u = 0.7), so a request spends `cost * (1 + u^(b-1) / (c (1 - u)))` in the endpoint. The
/// formula takes any positive `c`, so a fractional CPU limit needs no rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Queue {
    /// Service time: CPU seconds per request (or the cluster-relative unit).
    cost: f64,
    /// Servers: the CPU limit in cores (requests served at once).
    servers: f64,
    /// Sakasegawa's exponent `sqrt(2 (c + 1))`.
    exponent: f64,
}

impl Queue {
    /// A queue with this service time and number of servers (both positive).
    pub(crate) fn new(cost: f64, servers: f64) -> Self {
        Self {
            cost,
            servers,
            exponent: (2.0 * (servers + 1.0)).sqrt(),
        }
    }

    /// Expected time a request spends in the queue at utilization `utilization` (below 1): what
    /// the plan minimizes, weighted by traffic; the plan itself only needs its derivative.
    #[cfg(test)]
    pub(crate) fn latency(&self, utilization: f64) -> f64 {
        let waiting = utilization.powf(self.exponent - 1.0) / (1.0 - utilization);
        self.cost * (1.0 + waiting / self.servers)
    }

    /// The latency one more request per unit of time adds to the endpoint's total,
    /// `d(rate * latency) / d(rate)`, at utilization `utilization`: `cost` when idle, rising
    /// without bound towards full utilization.
    pub(crate) fn marginal(&self, utilization: f64) -> f64 {
        self.cost * (1.0 + self.waiting_slope(utilization).0 / self.servers)
    }

    /// The utilization in `[0, highest]` at which the marginal latency is `marginal` (`0`
    /// when even an idle endpoint costs more, `highest` when even that costs less).
    pub(crate) fn utilization_at(&self, marginal: f64, highest: f64) -> f64 {
        self.utilization_between(marginal, highest, 0.0, highest)
    }

    /// [`Self::utilization_at`] when the answer is known to lie in `[lower, upper]` (the
    /// utilizations at a lower and a higher marginal): a narrow bracket takes fewer steps. An
    /// answer outside the bracket comes back at its nearest end.
    pub(crate) fn utilization_between(
        &self,
        marginal: f64,
        highest: f64,
        lower: f64,
        upper: f64,
    ) -> f64 {
        let highest = highest.clamp(0.0, MAX_MODELLED_UTILIZATION);
        // Solve g'(u) = target for the waiting g(u) = u^b / (1 - u).
        let target = self.servers * (marginal / self.cost - 1.0);
        if target.is_nan() || target <= 0.0 || highest <= 0.0 {
            return 0.0;
        }
        let upper = upper.clamp(0.0, highest);
        if upper >= highest && self.waiting_slope(highest).0 <= target {
            return highest;
        }
        // g' rises strictly, so the root is bracketed; Newton from the top converges without
        // overshoot where g' is convex (c >= 1) and the bracket catches it where it is not.
        let (mut low, mut high) = (lower.clamp(0.0, upper), upper);
        let mut utilization = upper;
        for _ in 0..INVERSION_STEPS {
            let (slope, curvature) = self.waiting_slope(utilization);
            let error = slope - target;
            if error.abs() <= 1e-12 * target {
                return utilization;
            }
            if error > 0.0 {
                high = utilization;
            } else {
                low = utilization;
            }
            if high - low <= 1e-12 {
                break;
            }
            let step = utilization - error / curvature;
            utilization = if step > low && step < high && curvature > 0.0 {
                step
            } else {
                0.5 * (low + high)
            };
        }
        0.5 * (low + high)
    }

    /// `g'(u)` and `g''(u)` of the waiting `g(u) = u^b / (1 - u)`.
    fn waiting_slope(&self, utilization: f64) -> (f64, f64) {
        let b = self.exponent;
        let u = utilization.clamp(0.0, MAX_MODELLED_UTILIZATION);
        if u <= 0.0 {
            return (0.0, 0.0);
        }
        let power = u.powf(b - 2.0);
        let q = 1.0 / (1.0 - u);
        let slope = power * u * q * (b + u * q);
        let curvature = power * q * (b * (b - 1.0) + 2.0 * b * u * q + 2.0 * u * u * q * q);
        (slope, curvature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_is_mm1() {
        let queue = Queue::new(0.002, 1.0);
        for u in [0.1, 0.5, 0.9] {
            assert!((queue.latency(u) - 0.002 / (1.0 - u)).abs() < 1e-12);
            // d(lambda T)/d(lambda) of M/M/1 is s / (1 - u)^2.
            assert!((queue.marginal(u) - 0.002 / (1.0 - u).powi(2)).abs() < 1e-12);
        }
    }

    #[test]
    fn the_marginal_is_the_derivative_of_the_total() {
        for servers in [0.5, 1.0, 4.0, 64.0] {
            let queue = Queue::new(0.005, servers);
            let total = |u: f64| u * servers / 0.005 * queue.latency(u);
            for u in [0.05, 0.3, 0.7, 0.95] {
                let h = 1e-6;
                let numeric = (total(u + h) - total(u - h)) / (2.0 * h) * 0.005 / servers;
                let exact = queue.marginal(u);
                assert!((numeric - exact).abs() < 1e-6 * exact, "{servers} {u}");
            }
        }
    }

    #[test]
    fn the_inversion_finds_the_utilization() {
        for servers in [0.001, 0.5, 1.0, 4.0, 64.0] {
            let queue = Queue::new(0.003, servers);
            for u in [0.01, 0.2, 0.6, 0.85, 0.89] {
                if queue.marginal(u) <= 0.003 * (1.0 + 1e-12) {
                    // No queueing a float can show (0.01^10 with 64 cores): idle to the model.
                    continue;
                }
                let found = queue.utilization_at(queue.marginal(u), 0.9);
                assert!((found - u).abs() < 1e-9, "{servers}: {u} -> {found}");
            }
            assert_eq!(queue.utilization_at(0.003, 0.9), 0.0);
            assert_eq!(queue.utilization_at(0.002, 0.9), 0.0);
            assert_eq!(queue.utilization_at(1e9, 0.9), 0.9);
        }
    }

    #[test]
    fn a_bracket_around_the_answer_finds_it() {
        for servers in [0.001, 0.5, 1.0, 4.0, 64.0] {
            let queue = Queue::new(0.003, servers);
            for u in [0.01, 0.2, 0.6, 0.85, 0.89] {
                let marginal = queue.marginal(u);
                if marginal <= 0.003 * (1.0 + 1e-12) {
                    continue;
                }
                let unbracketed = queue.utilization_at(marginal, 0.9);
                for width in [0.5, 1e-3, 1e-9, 1e-13] {
                    let (lower, upper) = ((u - width).max(0.0), (u + width).min(0.9));
                    let found = queue.utilization_between(marginal, 0.9, lower, upper);
                    assert!(
                        (found - u).abs() < 1e-9,
                        "{servers} {width}: {u} -> {found}"
                    );
                    assert!((found - unbracketed).abs() < 1e-9, "{servers} {width}");
                }
                // A bracket that misses the answer gives its nearest end.
                let below = queue.utilization_between(marginal, 0.9, 0.0, 0.5 * u);
                assert!((below - 0.5 * u).abs() < 1e-9, "{servers}: {u} -> {below}");
                let above = queue.utilization_between(marginal, 0.9, u + 0.005, 0.9);
                assert!(
                    (above - u - 0.005).abs() < 1e-9,
                    "{servers}: {u} -> {above}"
                );
            }
            assert_eq!(queue.utilization_between(1e9, 0.9, 0.5, 0.9), 0.9);
            assert_eq!(queue.utilization_between(0.002, 0.9, 0.0, 0.9), 0.0);
        }
    }

    #[test]
    fn four_servers_are_close_to_erlang_c() {
        // M/M/4 at u = 0.7: Erlang C's probability of waiting is 0.4287, so a request spends
        // 1 + 0.4287 / (4 - 2.8) = 1.357 service times; the approximation gives 1.385.
        let queue = Queue::new(1.0, 4.0);
        let erlang = 1.0 + 0.428_654 / (4.0 - 2.8);
        assert!(
            (queue.latency(0.7) - erlang).abs() < 0.03 * erlang,
            "{}",
            queue.latency(0.7)
        );
    }
}
