//! Why an endpoint has its weight: kept as numbers each tick, written as text only when read.

use std::fmt;

use super::{CostBasis, DEFAULT_WEIGHT};

/// A short human explanation of one weight, shown by the `Inspect` API.
///
/// Every tick explains every endpoint, but the text is read rarely (an operator's `Inspect`
/// call), so the reason keeps the numbers and writes the text only through [`fmt::Display`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reason {
    /// How the weight was chosen.
    cause: Cause,
    /// Ramped by slow start: percent of the ramp done and the target weight.
    slow_start: Option<(f64, f64)>,
    /// Scaled down because its locality's sum reached 2^32.
    scaled_down: bool,
    /// The computed weight stayed within the push threshold: the served one is kept.
    still_serving: Option<u32>,
    /// Suspect (cheap with no error signal): its cost as a fraction of the others' median.
    suspect: Option<f64>,
    /// The load was requests in flight, as the cluster has no CPU signal.
    in_flight_load: bool,
}

/// Where the capacity planner's cost for an endpoint comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CostSource {
    /// Measured (this tick's estimate averaged with the remembered ones).
    Measured,
    /// Never measured (no request served yet, nothing remembered): the median of the others.
    Assumed,
    /// Never measured, under `latency`: the slowest measured cost, its traffic spread in
    /// proportion to capacity (see `capacity::newcomer_share`).
    AssumedSlowest,
    /// Never measured, under `latency`: the cost measured on its node, its traffic spread in
    /// proportion to capacity (see `capacity::newcomer_share`).
    AssumedNode,
    /// Measured and risen by this factor this tick: the endpoint is moved off without the step
    /// limit.
    Rose(f64),
}

/// How the capacity planner placed an endpoint's traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Placement {
    /// `balance`: in proportion to capacity.
    Balance,
    /// `latency`, at the least modelled latency: the endpoint's cost tier (1 = cheapest) and
    /// what bounds its traffic.
    Latency { tier: usize, bound: Bound },
    /// `latency` with more demand than the cluster takes at this ceiling: in proportion to
    /// capacity.
    Spread { ceiling: f64 },
    /// `latency`, not measured yet: its capacity share at the slowest measured cost.
    Newcomer,
}

/// What bounds a `latency` endpoint's traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Bound {
    /// Nothing: its marginal latency is the cluster's.
    Free,
    /// The utilization ceiling (this one).
    Ceiling(f64),
    /// The utilization below the ceiling that leaves room for the demand to grow by `rise`
    /// before the samples show it (`surge_headroom`).
    Headroom { utilization: f64, rise: f64 },
    /// Its probe: even idle, it costs more than the others at the margin.
    Probe,
}

/// How a weight was chosen, with the figures its explanation shows.
#[derive(Clone, Debug, Default, PartialEq)]
enum Cause {
    /// No explanation (tests and hand-built snapshots).
    #[default]
    Unexplained,
    /// Fixed in the config.
    Configured,
    /// Static, not configured, and no weight configured in the cluster.
    DefaultShare,
    /// Static, not configured: the mean of the configured weights.
    MeanShare,
    /// Planned by the capacity algorithm.
    Capacity {
        basis: CostBasis,
        /// Cost per request, or relative to the mean without request rates.
        cost: f64,
        /// Where the cost comes from.
        source: CostSource,
        utilization: f64,
        /// How the objective placed it.
        placement: Placement,
    },
    /// Moved by the distance algorithm.
    Distance {
        cpu: f64,
        /// Relative distance from the mean CPU.
        distance: f64,
        mean: f64,
        previous: u32,
        weight: u32,
        scale: f64,
    },
    /// No fresh sample, under `latency`: the weight for its share at the slowest measured cost,
    /// or at its node's.
    NewPodShare {
        /// As in `NewPod`.
        stale: Option<(u64, u64)>,
        /// Its planned share of the cluster's traffic.
        share: f64,
        /// At the cost measured on its node rather than the slowest.
        on_node: bool,
    },
    /// No fresh sample: the fill-in weight.
    NewPod {
        /// Age of a stale sample and the staleness limit, in seconds; `None` without a sample.
        stale: Option<(u64, u64)>,
        percentile: f64,
    },
    /// Holding with a remembered weight.
    HoldingKept { age_seconds: u64 },
    /// Holding without a remembered weight.
    HoldingMedian { age_seconds: u64 },
    /// The cluster is idle.
    Idle { total_cpu: f64, idle_cpu: f64 },
    /// Stale for too long, or never measured.
    Fallback { age_seconds: Option<u64> },
    /// Held at a probe: its error ratio is clearly above the rest of the cluster's (NaN when
    /// held from an earlier tick without an error reading now).
    Failing {
        ratio: f64,
        baseline: f64,
        share: f64,
        healthy: f64,
        needed: f64,
    },
}

impl Reason {
    fn from_cause(cause: Cause) -> Self {
        Self {
            cause,
            ..Self::default()
        }
    }

    /// The weight is fixed in the config.
    pub fn configured() -> Self {
        Self::from_cause(Cause::Configured)
    }

    /// An equal share: the default weight, as no endpoint has a configured one.
    pub(crate) fn default_share() -> Self {
        Self::from_cause(Cause::DefaultShare)
    }

    /// An equal share: the mean of the configured weights.
    pub(crate) fn mean_share() -> Self {
        Self::from_cause(Cause::MeanShare)
    }

    /// Planned by the capacity algorithm from this cost and planned utilization.
    pub(crate) fn capacity(
        basis: CostBasis,
        cost: f64,
        source: CostSource,
        utilization: f64,
        placement: Placement,
    ) -> Self {
        Self::from_cause(Cause::Capacity {
            basis,
            cost,
            source,
            utilization,
            placement,
        })
    }

    /// Moved by the distance algorithm.
    pub(crate) fn distance(
        cpu: f64,
        distance: f64,
        mean: f64,
        previous: u32,
        weight: u32,
        scale: f64,
    ) -> Self {
        Self::from_cause(Cause::Distance {
            cpu,
            distance,
            mean,
            previous,
            weight,
            scale,
        })
    }

    /// The fill-in weight of an endpoint without a fresh sample (`stale`: its sample's age and
    /// the staleness limit, in seconds).
    pub(crate) fn new_pod(stale: Option<(u64, u64)>, percentile: f64) -> Self {
        Self::from_cause(Cause::NewPod { stale, percentile })
    }

    /// No fresh sample under `latency`: started at `share` of the traffic.
    pub(crate) fn new_pod_share(stale: Option<(u64, u64)>, share: f64, on_node: bool) -> Self {
        Self::from_cause(Cause::NewPodShare {
            stale,
            share,
            on_node,
        })
    }

    /// Holding: the remembered weight kept (`kept`) or the median of the held weights.
    pub(crate) fn holding(age_seconds: u64, kept: bool) -> Self {
        Self::from_cause(if kept {
            Cause::HoldingKept { age_seconds }
        } else {
            Cause::HoldingMedian { age_seconds }
        })
    }

    /// Equal weights of an idle cluster.
    pub(crate) fn idle(total_cpu: f64, idle_cpu: f64) -> Self {
        Self::from_cause(Cause::Idle {
            total_cpu,
            idle_cpu,
        })
    }

    /// Equal weights after samples stopped (`age_seconds` of the newest) or never came.
    pub(crate) fn fallback(age_seconds: Option<u64>) -> Self {
        Self::from_cause(Cause::Fallback { age_seconds })
    }

    /// Held at `share` of the traffic: error ratio `ratio` against the cluster's `baseline`,
    /// with `healthy` of the `needed` requests towards its release counted.
    pub(crate) fn failing(
        ratio: f64,
        baseline: f64,
        share: f64,
        (healthy, needed): (f64, f64),
    ) -> Self {
        Self::from_cause(Cause::Failing {
            ratio,
            baseline,
            share,
            healthy,
            needed,
        })
    }

    /// Notes the slow-start ramp (`percent` done towards `target`).
    pub(crate) fn ramped(&mut self, percent: f64, target: f64) {
        self.slow_start = Some((percent, target));
    }

    /// Notes that the locality's sum forced a scale-down.
    pub(crate) fn scale_down(&mut self) {
        self.scaled_down = true;
    }

    /// Notes that the endpoint is suspect: its cost is `fraction` of the others' median with no
    /// error signal, so it was planned at most an equal share.
    pub(crate) fn suspect(&mut self, fraction: f64) {
        self.suspect = Some(fraction);
    }

    /// Notes that requests in flight stood in for CPU (no CPU signal in the cluster).
    pub(crate) fn in_flight_load(&mut self) {
        self.in_flight_load = true;
    }

    /// Notes that the served weight `previous` is kept (within the push threshold).
    pub(crate) fn keep_serving(&mut self, previous: u32) {
        self.still_serving = Some(previous);
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cause.fmt(formatter)?;
        if let Some((percent, target)) = self.slow_start {
            write!(formatter, "; slow start {percent:.0}% of {target}")?;
        }
        if self.in_flight_load {
            formatter.write_str("; load: requests in flight (no cpu signal), cost in s/req")?;
        }
        if let Some(fraction) = self.suspect {
            write!(
                formatter,
                "; suspect: cost {fraction:.2}x the others' median and no error signal (fast failure?): capped at an equal share"
            )?;
        }
        if self.scaled_down {
            formatter.write_str("; scaled down: locality sum over 2^32")?;
        }
        if let Some(previous) = self.still_serving {
            write!(
                formatter,
                "; still serving {previous}: within push threshold"
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unexplained => Ok(()),
            Self::Configured => formatter.write_str("configured"),
            Self::DefaultShare => write!(formatter, "equal share (default {DEFAULT_WEIGHT})"),
            Self::MeanShare => formatter.write_str("equal share (mean of the configured weights)"),
            Self::Capacity {
                basis,
                cost,
                source,
                utilization,
                placement,
            } => capacity_text(formatter, *basis, *cost, *source, *utilization, *placement),
            Self::Distance {
                cpu,
                distance,
                mean,
                previous,
                weight,
                scale,
            } => write!(
                formatter,
                "fresh: cpu {cpu:.3} is {:+.0}% from mean {mean:.3}; weight {previous} -> {weight} (median rescaled x{scale:.2})",
                distance * 100.0,
            ),
            Self::NewPod { stale, percentile } => {
                write_new_pod(formatter, *stale)?;
                write!(
                    formatter,
                    "; weight at p{percentile:.0} of the computed weights"
                )
            }
            Self::NewPodShare {
                stale,
                share,
                on_node,
            } => {
                write_new_pod(formatter, *stale)?;
                let cost = if *on_node {
                    "the cost measured on its node"
                } else {
                    "the slowest measured cost"
                };
                write!(
                    formatter,
                    "; weight for {:.2}% of the traffic (its capacity share at {cost}, until measured)",
                    share * 100.0
                )
            }
            Self::HoldingKept { age_seconds } => write!(
                formatter,
                "holding: newest cpu sample {age_seconds}s old; last weight kept"
            ),
            Self::HoldingMedian { age_seconds } => write!(
                formatter,
                "holding: newest cpu sample {age_seconds}s old; median of the held weights"
            ),
            Self::Idle {
                total_cpu,
                idle_cpu,
            } => write!(
                formatter,
                "idle: cluster uses {total_cpu:.3} cores (< {idle_cpu}); equal weights"
            ),
            Self::Fallback { age_seconds } => {
                formatter.write_str("fallback: ")?;
                match age_seconds {
                    Some(age) => write!(formatter, "newest cpu sample {age}s old")?,
                    None => formatter.write_str("no cpu sample ever")?,
                }
                formatter.write_str("; equal weights")
            }
            Self::Failing {
                ratio,
                baseline,
                share,
                healthy,
                needed,
            } => {
                if ratio.is_nan() {
                    formatter.write_str("failing: held since an earlier tick, no error rate now")?;
                } else {
                    write!(
                        formatter,
                        "failing: {:.1}% errors vs {:.1}% in the rest of the cluster",
                        ratio * 100.0,
                        baseline * 100.0
                    )?;
                }
                write!(
                    formatter,
                    "; held at a {:.1}% probe until it answers {needed:.0} requests well \
                     ({healthy:.1} so far)",
                    share * 100.0
                )
            }
        }
    }
}

/// The capacity planner's explanation, e.g. `fresh: cost 0.0100 cpu-s/req, planned util 0.29
/// (latency tier 1)`.
fn capacity_text(
    formatter: &mut fmt::Formatter<'_>,
    basis: CostBasis,
    cost: f64,
    source: CostSource,
    utilization: f64,
    placement: Placement,
) -> fmt::Result {
    let mut text = String::with_capacity(72);
    text.push_str("fresh: cost ");
    match basis {
        CostBasis::PerRequest => {
            push_fixed(&mut text, cost, 4);
            text.push_str(" cpu-s/req");
        }
        CostBasis::Relative => {
            push_fixed(&mut text, cost, 2);
            text.push_str("x the mean (no request rate)");
        }
    }
    match source {
        CostSource::Measured => {}
        CostSource::Assumed => text.push_str(" (assumed: the median, none measured yet)"),
        CostSource::AssumedSlowest => {
            text.push_str(" (assumed: the slowest measured, none measured yet)")
        }
        CostSource::AssumedNode => {
            text.push_str(" (assumed: as measured on its node, none measured yet)")
        }
        CostSource::Rose(factor) => {
            text.push_str(" (rose x");
            push_fixed(&mut text, factor, 2);
            text.push_str(" this tick: moved off at once)");
        }
    }
    text.push_str(", planned util ");
    push_fixed(&mut text, utilization, 2);
    match placement {
        Placement::Balance => text.push_str(" (balance)"),
        Placement::Latency { tier, bound } => {
            text.push_str(" (latency tier ");
            push_digits(&mut text, tier as u64, 1);
            match bound {
                Bound::Free => {}
                Bound::Ceiling(ceiling) => {
                    text.push_str(", at the ceiling ");
                    push_fixed(&mut text, ceiling, 2);
                }
                Bound::Headroom { utilization, rise } => {
                    text.push_str(", at ");
                    push_fixed(&mut text, utilization, 2);
                    text.push_str(": room for a x");
                    push_fixed(&mut text, rise, 1);
                    text.push_str(" rise");
                }
                Bound::Probe => text.push_str(", probe"),
            }
            text.push(')');
        }
        Placement::Spread { ceiling } => {
            text.push_str(" (demand past the ceiling ");
            push_fixed(&mut text, ceiling, 2);
            text.push_str(": in proportion to capacity)");
        }
        Placement::Newcomer => text.push_str(" (latency, new: its capacity share until measured)"),
    }
    formatter.write_str(&text)
}

/// `new-pod: ` and why it has no fresh sample.
fn write_new_pod(formatter: &mut fmt::Formatter<'_>, stale: Option<(u64, u64)>) -> fmt::Result {
    formatter.write_str("new-pod: ")?;
    match stale {
        Some((age, limit)) => write!(formatter, "cpu sample {age}s old (stale after {limit}s)"),
        None => formatter.write_str("no cpu sample yet"),
    }
}

/// Appends `value` with `decimals` decimals (as `{:.N}` would, but never `-0.00`).
fn push_fixed(text: &mut String, value: f64, decimals: u32) {
    let scale = 10_u64.pow(decimals);
    if !value.is_finite() || value.abs() >= (u64::MAX / scale) as f64 / 2.0 {
        text.push_str(&format!("{value:.*}", decimals as usize));
        return;
    }
    let scaled = (value * scale as f64).round();
    if scaled < 0.0 {
        text.push('-');
    }
    let magnitude = scaled.abs() as u64;
    push_digits(text, magnitude / scale, 1);
    text.push('.');
    push_digits(text, magnitude % scale, decimals as usize);
}

/// Appends the decimal digits of `number`, zero-padded to at least `width` digits.
fn push_digits(text: &mut String, mut number: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while number > 0 || digits.len() - start < width {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
    }
    for digit in &digits[start..] {
        text.push(char::from(*digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_matches_float_formatting() {
        for value in [0.0, 0.001_25, 0.29, 1.0, 12.345_67, 0.005, -0.5, 3.999_95] {
            for decimals in [2, 4] {
                let mut text = String::new();
                push_fixed(&mut text, value, decimals);
                assert_eq!(
                    text,
                    format!("{value:.*}", decimals as usize).replace("-0.00", "0.00"),
                    "{value} to {decimals} places"
                );
            }
        }
    }

    /// The texts as they were written when reasons were built as strings every tick.
    #[test]
    fn texts_are_unchanged() {
        let cases = [
            (Reason::default(), ""),
            (Reason::configured(), "configured"),
            (Reason::default_share(), "equal share (default 100)"),
            (
                Reason::mean_share(),
                "equal share (mean of the configured weights)",
            ),
            (
                Reason::capacity(
                    CostBasis::PerRequest,
                    0.01,
                    CostSource::Measured,
                    0.2857,
                    Placement::Latency {
                        tier: 1,
                        bound: Bound::Free,
                    },
                ),
                "fresh: cost 0.0100 cpu-s/req, planned util 0.29 (latency tier 1)",
            ),
            (
                Reason::capacity(
                    CostBasis::Relative,
                    1.5,
                    CostSource::Measured,
                    0.5,
                    Placement::Balance,
                ),
                "fresh: cost 1.50x the mean (no request rate), planned util 0.50 (balance)",
            ),
            (
                Reason::capacity(
                    CostBasis::PerRequest,
                    0.01,
                    CostSource::Assumed,
                    0.9,
                    Placement::Latency {
                        tier: 1,
                        bound: Bound::Ceiling(0.9),
                    },
                ),
                "fresh: cost 0.0100 cpu-s/req (assumed: the median, none measured yet), planned util 0.90 (latency tier 1, at the ceiling 0.90)",
            ),
            (
                Reason::capacity(
                    CostBasis::PerRequest,
                    0.002,
                    CostSource::Measured,
                    0.3,
                    Placement::Latency {
                        tier: 1,
                        bound: Bound::Headroom {
                            utilization: 0.3,
                            rise: 3.0,
                        },
                    },
                ),
                "fresh: cost 0.0020 cpu-s/req, planned util 0.30 (latency tier 1, at 0.30: room for a x3.0 rise)",
            ),
            (
                Reason::capacity(
                    CostBasis::PerRequest,
                    0.04,
                    CostSource::Rose(4.0),
                    0.0,
                    Placement::Latency {
                        tier: 3,
                        bound: Bound::Probe,
                    },
                ),
                "fresh: cost 0.0400 cpu-s/req (rose x4.00 this tick: moved off at once), planned util 0.00 (latency tier 3, probe)",
            ),
            (
                Reason::capacity(
                    CostBasis::PerRequest,
                    0.02,
                    CostSource::Measured,
                    0.95,
                    Placement::Spread { ceiling: 0.9 },
                ),
                "fresh: cost 0.0200 cpu-s/req, planned util 0.95 (demand past the ceiling 0.90: in proportion to capacity)",
            ),
            (
                Reason::distance(0.5, -0.5, 1.0, 5000, 7500, 1.25),
                "fresh: cpu 0.500 is -50% from mean 1.000; weight 5000 -> 7500 (median rescaled x1.25)",
            ),
            (
                Reason::new_pod(Some((120, 60)), 50.0),
                "new-pod: cpu sample 120s old (stale after 60s); weight at p50 of the computed weights",
            ),
            (
                Reason::new_pod(None, 0.0),
                "new-pod: no cpu sample yet; weight at p0 of the computed weights",
            ),
            (
                Reason::holding(65, true),
                "holding: newest cpu sample 65s old; last weight kept",
            ),
            (
                Reason::holding(65, false),
                "holding: newest cpu sample 65s old; median of the held weights",
            ),
            (
                Reason::idle(0.005, 0.01),
                "idle: cluster uses 0.005 cores (< 0.01); equal weights",
            ),
            (
                Reason::fallback(Some(400)),
                "fallback: newest cpu sample 400s old; equal weights",
            ),
            (
                Reason::fallback(None),
                "fallback: no cpu sample ever; equal weights",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
        let mut noted = Reason::new_pod(None, 50.0);
        noted.ramped(50.0, 10000.0);
        noted.scale_down();
        noted.keep_serving(42);
        assert_eq!(
            noted.to_string(),
            "new-pod: no cpu sample yet; weight at p50 of the computed weights; slow start 50% of 10000; scaled down: locality sum over 2^32; still serving 42: within push threshold"
        );
    }
}
