//! Placing a cluster's demand on its endpoints for an objective: in proportion to capacity
//! (`balance`), or at the least modelled latency under the ceiling (`latency`), with suspects
//! capped.

use super::capacity::Fleet;
use super::queueing::{Queue, MAX_MODELLED_UTILIZATION};
use crate::weighting::plan::FreshEndpoint;
use crate::weighting::reason::{Bound, Placement};

/// Endpoints whose cost is within this fraction of the cheapest of a tier are planned together,
/// at the tier's pooled cost, so that measurement noise between equally cheap endpoints cannot
/// reorder the plan from tick to tick. At 10%, one of twelve equal pods on the harsh lab
/// fleet fell out of the first tier every few ticks (the cheapest of twelve noisy readings sits
/// well below their mean) and its weight swung x3; 25% still separates 2 ms from 3.3 ms pods.
pub(crate) const COST_TIER_TOLERANCE: f64 = 0.25;

/// Without an error signal, an endpoint whose cost is below this fraction of the median of the
/// others is suspect: fast failure (an error answered in a fraction of a millisecond) is the
/// common cause of such a reading, so it is planned at most an equal share of the traffic.
/// On the seed lab fleet the fastest healthy pods cost 0.36x the median; a pod failing 90% of
/// its requests after 0.2 ms reads 0.07x.
pub(crate) const SUSPECT_FRACTION: f64 = 0.25;

/// Caps the capacity of suspect endpoints (no error reading, cost below [`SUSPECT_FRACTION`] of
/// the median of the others) at an equal share of the demand, or at what the others cannot take
/// below the ceiling if that is more; returns each one's cost as a fraction of that median,
/// `None` for the others.
pub(crate) fn cap_suspects(fleet: &mut Fleet, fresh: &[FreshEndpoint]) -> Vec<Option<f64>> {
    let count = fresh.len();
    let mut suspects = vec![None; count];
    if count < 2 || fresh.iter().all(|endpoint| endpoint.errors.is_some()) {
        return suspects;
    }
    // This runs on every tick of every cluster without an error signal, so the usual answer
    // (no suspect) must not cost a sort: the others' median is never below the k-th smallest
    // cost of all, so a cheapest cost that is not below the fraction of that has no suspect.
    let lowest_rank = (count - 2) / 2;
    let mut sorted = fleet.costs.clone();
    let (_, kth, _) = sorted.select_nth_unstable_by(lowest_rank, f64::total_cmp);
    let floor = *kth;
    let cheapest = fresh
        .iter()
        .zip(&fleet.costs)
        .filter(|(endpoint, _)| endpoint.errors.is_none())
        .map(|(_, cost)| *cost)
        .fold(f64::INFINITY, f64::min);
    if cheapest >= SUSPECT_FRACTION * floor {
        return suspects;
    }
    sorted.sort_by(f64::total_cmp);
    for (index, endpoint) in fresh.iter().enumerate() {
        if endpoint.errors.is_some() {
            continue;
        }
        let cost = fleet.costs[index];
        let position = sorted.partition_point(|value| value.total_cmp(&cost).is_lt());
        let median = median_without(&sorted, position);
        if median > 0.0 && cost / median < SUSPECT_FRACTION {
            suspects[index] = Some(cost / median);
        }
    }
    let suspect_capacity: f64 = suspects
        .iter()
        .zip(&fleet.capacities)
        .filter(|(suspect, _)| suspect.is_some())
        .map(|(_, capacity)| capacity)
        .sum();
    if suspect_capacity <= 0.0 {
        return suspects;
    }
    let others_capacity: f64 = fleet.capacities.iter().sum::<f64>() - suspect_capacity;
    // Never cap so far that the others are planned past the ceiling.
    let overflow = (fleet.demand - others_capacity).max(0.0);
    let equal_share = fleet.demand / count as f64;
    for (suspect, capacity) in suspects.iter().zip(fleet.capacities.iter_mut()) {
        if suspect.is_some() {
            let needed = overflow * *capacity / suspect_capacity;
            *capacity = capacity.min(equal_share.max(needed));
        }
    }
    suspects
}

/// The median of `sorted` without its element at `position` (interpolated as `percentile`
/// does), without building the shorter list.
fn median_without(sorted: &[f64], position: usize) -> f64 {
    let count = sorted.len().saturating_sub(1);
    if count == 0 {
        return 0.0;
    }
    let value = |rank: usize| {
        if rank < position {
            sorted[rank]
        } else {
            sorted[rank + 1]
        }
    };
    let rank = 0.5 * (count - 1) as f64;
    let (lower, upper) = (rank.floor() as usize, rank.ceil() as usize);
    value(lower) + (value(upper) - value(lower)) * (rank - lower as f64)
}

/// `balance`: traffic in proportion to capacity, which evens out utilization.
pub(crate) fn balance(fleet: &Fleet) -> Vec<f64> {
    spread(fleet)
}

/// The demand spread in proportion to capacity.
pub(crate) fn spread(fleet: &Fleet) -> Vec<f64> {
    let total: f64 = fleet.capacities.iter().sum();
    fleet
        .capacities
        .iter()
        .map(|capacity| fleet.demand * capacity / total)
        .collect()
}

/// Groups endpoint indices by cost, cheapest first (see [`COST_TIER_TOLERANCE`]).
pub(crate) fn tiers(costs: &[f64]) -> Vec<Vec<usize>> {
    // Ordered by cost (`f64::total_cmp`), then index: sorting integer keys holding both costs
    // half as much as comparing costs through the indices, on every tick of every cluster.
    let mut order: Vec<u128> = costs
        .iter()
        .enumerate()
        .map(|(index, cost)| (u128::from(total_order_key(*cost)) << 64) | index as u128)
        .collect();
    order.sort_unstable();
    let order: Vec<usize> = order
        .iter()
        .map(|key| (key & u128::from(u64::MAX)) as usize)
        .collect();
    let mut tiers: Vec<Vec<usize>> = Vec::new();
    let mut start = 0;
    for position in 1..=order.len() {
        if position == order.len()
            || costs[order[position]] > costs[order[start]] * (1.0 + COST_TIER_TOLERANCE)
        {
            tiers.push(order[start..position].to_vec());
            start = position;
        }
    }
    tiers
}

/// An unsigned key that orders as `f64::total_cmp` orders the values.
fn total_order_key(value: f64) -> u64 {
    let bits = value.to_bits();
    // Negative values (sign bit set) reverse their order; positive ones move above them.
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// Relative width of the bracket on the marginal latency at which the search stops: far below
/// what integer weights up to 10,000 can show (the last step interpolates between its ends).
const MARGINAL_PRECISION: f64 = 1e-10;

/// Most halvings of that bracket: from its widest (the costs floored at 1e-3 of the median, the
/// marginal at 0.99 about 10^4 times a cost: 10^7 wide) to the precision takes about 57.
const MARGINAL_STEPS: usize = 100;

/// `latency`: the traffic that minimizes the modelled mean latency (each endpoint an M/M/c
/// queue, see [`Queue`]) with no endpoint above the ceiling, every endpoint keeping at least
/// `probe_share / count` of the demand so its cost stays measured. When the cluster cannot take
/// the demand below the ceiling, it is spread in proportion to capacity.
///
/// The optimum gives every endpoint that carries traffic between its probe and the ceiling the
/// same marginal latency `d(rate * latency) / d(rate)`. An idle endpoint's marginal is its cost,
/// so the cheapest take the traffic first and the others join as the demand grows; cheap
/// endpoints run hotter than costly ones, as their queueing costs less per request. Every load
/// is continuous in the demand (no endpoint jumps when another joins or reaches the ceiling).
/// Endpoints within [`COST_TIER_TOLERANCE`] of each other are modelled at their tier's pooled
/// cost (cores over capacity), so noise between equally cheap endpoints cannot reorder them.
///
/// With `surge_headroom` above 1 the plan keeps room for the demand to grow that much before the
/// samples show it: the utilization no endpoint is planned above is [`surge_ceiling`], not the
/// ceiling itself, and the optimum is the one under that bound.
///
/// Returns the planned traffic and how each endpoint was placed.
pub(crate) fn latency(
    fleet: &Fleet,
    probe_share: f64,
    surge_headroom: f64,
) -> (Vec<f64>, Vec<Placement>) {
    let count = fleet.costs.len();
    if count == 0 {
        return (Vec::new(), Vec::new());
    }
    let ceiling = fleet.ceiling.min(MAX_MODELLED_UTILIZATION);
    let full = fleet.full_capacities();
    let most = most_traffic(fleet, ceiling, &full);
    let most_total: f64 = most.iter().sum();
    if fleet.demand >= most_total {
        let spread = spread_over(fleet.demand, &most);
        return (
            spread,
            vec![
                Placement::Spread {
                    ceiling: fleet.ceiling
                };
                count
            ],
        );
    }
    let surge_ceiling = surge_ceiling(ceiling, fleet.demand, most_total, surge_headroom);
    let most = if surge_ceiling < ceiling {
        most_traffic(fleet, surge_ceiling, &full)
    } else {
        most
    };
    let probe = (probe_share.clamp(0.0, 0.5) * fleet.demand / count as f64).max(0.0);
    let model = Model::new(fleet, surge_ceiling, full, most, probe);
    let mut search = Search::new(&model);
    for _ in 0..MARGINAL_STEPS {
        if search.high - search.low <= MARGINAL_PRECISION * search.high {
            break;
        }
        let middle = 0.5 * (search.low + search.high);
        let placed = search.total(middle);
        search.narrow(middle, placed < fleet.demand);
    }
    let (low, high) = (search.low, search.high);
    let mut loads = model.loads(low);
    let high_loads = model.loads(high);
    // Between the two ends the loads move together; the point that places exactly the demand
    // keeps the plan continuous in it.
    let (below, above) = (loads.iter().sum::<f64>(), high_loads.iter().sum::<f64>());
    let fraction = if above > below {
        ((fleet.demand - below) / (above - below)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    for (load, high) in loads.iter_mut().zip(&high_loads) {
        *load += fraction * (high - *load);
    }
    let at_most = if surge_ceiling < ceiling {
        Bound::Headroom {
            utilization: surge_ceiling,
            rise: ceiling / surge_ceiling,
        }
    } else {
        Bound::Ceiling(fleet.ceiling)
    };
    let placements = loads
        .iter()
        .zip(model.tier_of.iter().zip(&model.most))
        .map(|(load, (tier, most))| Placement::Latency {
            tier: tier + 1,
            bound: if *load >= most * (1.0 - 1e-9) {
                at_most
            } else if *load <= probe * (1.0 + 1e-9) {
                Bound::Probe
            } else {
                Bound::Free
            },
        })
        .collect();
    (loads, placements)
}

/// The share of the cluster's traffic at the ceiling up to which a plan keeps room for a
/// sudden rise: past it the room shrinks, so that the plan never spreads the demand by capacity
/// (every pod at one utilization, the whole latency win lost) before the ceiling itself binds.
/// At 0.8 the pods keep room for the demand to grow by a quarter even then.
pub(crate) const SURGE_ROOM_LIMIT: f64 = 0.8;

/// The utilization the `latency` plan keeps every endpoint under so that the demand may grow
/// by `headroom` before the samples show it and still find every endpoint under `ceiling`:
/// `ceiling / headroom`, raised (at most to `ceiling`) where the demand would otherwise take
/// more than [`SURGE_ROOM_LIMIT`] of what the endpoints take below it. `most_total` is the
/// traffic they take at `ceiling`.
fn surge_ceiling(ceiling: f64, demand: f64, most_total: f64, headroom: f64) -> f64 {
    let roomy = ceiling / headroom.max(1.0);
    let needed = if most_total > 0.0 {
        ceiling * demand / (SURGE_ROOM_LIMIT * most_total)
    } else {
        ceiling
    };
    roomy.max(needed).min(ceiling)
}

/// The most traffic each endpoint may be planned: at the ceiling, suspects capped (`full`: its
/// traffic at full utilization).
fn most_traffic(fleet: &Fleet, ceiling: f64, full: &[f64]) -> Vec<f64> {
    fleet
        .capacities
        .iter()
        .zip(full)
        .map(|(capacity, full)| capacity.min(ceiling * full))
        .collect()
}

/// `demand` in proportion to `capacities` (equally when they are all zero).
fn spread_over(demand: f64, capacities: &[f64]) -> Vec<f64> {
    let total: f64 = capacities.iter().sum();
    if total > 0.0 {
        capacities
            .iter()
            .map(|capacity| demand * capacity / total)
            .collect()
    } else {
        vec![demand / capacities.len().max(1) as f64; capacities.len()]
    }
}

/// The latency plan's view of the fleet: one queue per tier and limit, and each endpoint's
/// bounds.
struct Model {
    /// The distinct queues: a tier's pooled cost with one CPU limit.
    queues: Vec<Queue>,
    /// Each queue's endpoints' traffic by its utilization, for the search.
    queue_loads: Vec<QueueLoad>,
    /// Each endpoint's queue.
    queue_of: Vec<usize>,
    /// Each endpoint's tier (0 = cheapest).
    tier_of: Vec<usize>,
    /// Each endpoint's traffic at full utilization.
    full: Vec<f64>,
    /// Each endpoint's most traffic (at the ceiling, suspects capped).
    most: Vec<f64>,
    /// The least traffic of every endpoint: its probe.
    probe: f64,
    /// The utilization no queue is planned above.
    ceiling: f64,
}

impl Model {
    /// `full` is each endpoint's traffic at full utilization, `most` its most.
    fn new(fleet: &Fleet, ceiling: f64, full: Vec<f64>, most: Vec<f64>, probe: f64) -> Self {
        let count = fleet.costs.len();
        let mut queues: Vec<Queue> = Vec::new();
        let mut queue_loads: Vec<QueueLoad> = Vec::new();
        let mut limits: Vec<u64> = Vec::new();
        let mut queue_of = vec![0; count];
        let mut tier_of = vec![0; count];
        for (rank, tier) in tiers(&fleet.costs).iter().enumerate() {
            // Pooled cost: the tier's cores over its requests per second at full utilization.
            let cores: f64 = tier.iter().map(|index| fleet.limits[*index]).sum();
            let rate: f64 = tier.iter().map(|index| full[*index]).sum();
            let cost = if rate > 0.0 {
                cores / rate
            } else {
                fleet.costs[tier[0]]
            };
            let first = queues.len();
            for index in tier {
                let limit = fleet.limits[*index];
                let queue = match limits[first..]
                    .iter()
                    .position(|known| *known == limit.to_bits())
                {
                    Some(position) => first + position,
                    None => {
                        limits.push(limit.to_bits());
                        queues.push(Queue::new(cost, limit));
                        queue_loads.push(QueueLoad::new(probe, ceiling, tier.len()));
                        queues.len() - 1
                    }
                };
                queue_of[*index] = queue;
                tier_of[*index] = rank;
                queue_loads[queue].add(full[*index], most[*index]);
            }
        }
        for loads in &mut queue_loads {
            loads.finish();
        }
        Self {
            queues,
            queue_loads,
            queue_of,
            tier_of,
            full,
            most,
            probe,
            ceiling,
        }
    }

    /// A marginal latency at which the loads place at most the demand (every queue idle) and
    /// one at which they place at least it (every queue at the ceiling).
    fn bracket(&self) -> (f64, f64) {
        let cheapest = self
            .queues
            .iter()
            .map(|queue| queue.marginal(0.0))
            .fold(f64::INFINITY, f64::min);
        let dearest = self
            .queues
            .iter()
            .map(|queue| queue.marginal(self.ceiling))
            .fold(0.0, f64::max);
        (cheapest, dearest.max(cheapest))
    }

    /// Each endpoint's traffic when every queue runs at the marginal latency `marginal`, within
    /// its probe and its most.
    fn loads(&self, marginal: f64) -> Vec<f64> {
        let utilizations: Vec<f64> = self
            .queues
            .iter()
            .map(|queue| queue.utilization_at(marginal, self.ceiling))
            .collect();
        self.queue_of
            .iter()
            .zip(self.full.iter().zip(&self.most))
            .map(|(queue, (full, most))| load(utilizations[*queue], *full, *most, self.probe))
            .collect()
    }
}

/// One endpoint's traffic at its queue's utilization, within its probe and its most.
fn load(utilization: f64, full: f64, most: f64, probe: f64) -> f64 {
    (utilization * full).min(most).max(probe)
}

/// The traffic of a queue's endpoints together at a utilization `u` up to the ceiling, each
/// within its probe and its most ([`load`]): `sum max(min(u * full, most), probe)`, piecewise
/// linear in `u`. Kept as its breakpoints with running sums, so that each step of the search
/// reads it with binary searches, not a pass over every endpoint.
///
/// Up to the ceiling, `u * full` reaches `most` only where it is capped below `ceiling * full`
/// (a suspect), so only such an endpoint has a breakpoint at its most; and the endpoints arrive
/// cheapest first, so with one limit their joins arrive in order and need no sort.
struct QueueLoad {
    /// The probe every endpoint takes at least.
    probe: f64,
    /// The highest utilization asked about.
    ceiling: f64,
    /// The traffic of the endpoints that always take their probe.
    fixed: f64,
    /// Utilizations at which an endpoint leaves its probe (`probe / full`), with its `full`;
    /// then (see [`Self::finish`]) ascending, with `joined_full[k]` the `full` of the first `k`.
    joins: Vec<(f64, f64)>,
    joined_full: Vec<f64>,
    /// Utilizations at which a capped endpoint reaches its most (`most / full`), with its `full`
    /// and `most`; then ascending, with the running sums of both.
    fills: Vec<(f64, f64, f64)>,
    filled_full: Vec<f64>,
    filled_most: Vec<f64>,
    /// The `(full, most)` of endpoints with a bound that is not a finite number, added one by
    /// one with [`load`] itself.
    unusual: Vec<(f64, f64)>,
}

impl QueueLoad {
    /// An empty queue for up to `endpoints` endpoints.
    fn new(probe: f64, ceiling: f64, endpoints: usize) -> Self {
        Self {
            probe,
            ceiling,
            fixed: 0.0,
            joins: Vec::with_capacity(endpoints),
            joined_full: Vec::new(),
            fills: Vec::new(),
            filled_full: Vec::new(),
            filled_most: Vec::new(),
            unusual: Vec::new(),
        }
    }

    /// Adds an endpoint with this traffic at full utilization and this most.
    fn add(&mut self, full: f64, most: f64) {
        let probe = self.probe;
        if !(full.is_finite() && full > 0.0 && most.is_finite() && probe.is_finite()) {
            self.unusual.push((full, most));
        } else if most <= probe {
            self.fixed += probe;
        } else {
            self.joins.push((probe / full, full));
            if most < self.ceiling * full {
                self.fills.push((most / full, full, most));
            }
        }
    }

    /// Orders the breakpoints and sums them up, once every endpoint is added.
    fn finish(&mut self) {
        if !self.joins.is_sorted_by(|left, right| left.0 <= right.0) {
            self.joins
                .sort_unstable_by(|left, right| left.0.total_cmp(&right.0));
        }
        self.fills
            .sort_unstable_by(|left, right| left.0.total_cmp(&right.0));
        self.joined_full = running_sums(self.joins.iter().map(|join| join.1));
        self.filled_full = running_sums(self.fills.iter().map(|fill| fill.1));
        self.filled_most = running_sums(self.fills.iter().map(|fill| fill.2));
    }

    /// The endpoints' traffic at `utilization`.
    fn at(&self, utilization: f64) -> f64 {
        let utilization = utilization.min(self.ceiling);
        // Every endpoint past its fill is past its join too (`most > probe`), so those between
        // the two take `utilization * full`.
        let joined = self.joins.partition_point(|join| join.0 <= utilization);
        let filled = self.fills.partition_point(|fill| fill.0 <= utilization);
        let between = (self.joined_full[joined] - self.filled_full[filled]).max(0.0);
        let unusual: f64 = self
            .unusual
            .iter()
            .map(|(full, most)| load(utilization, *full, *most, self.probe))
            .sum();
        self.fixed
            + self.probe * (self.joins.len() - joined) as f64
            + utilization * between
            + self.filled_most[filled]
            + unusual
    }
}

/// `0` and then the running sums of `values`.
fn running_sums(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sums = Vec::with_capacity(values.size_hint().0 + 1);
    sums.push(0.0);
    let mut sum = 0.0;
    for value in values {
        sum += value;
        sums.push(sum);
    }
    sums
}

/// The bisection on the marginal latency, with each queue's utilization at both ends of the
/// bracket: the utilization at a marginal between them lies between them, so each step's
/// inversion starts inside a bracket that narrows with the search.
struct Search<'a> {
    model: &'a Model,
    /// The bracket: the loads place at most the demand at `low`, at least it at `high`.
    low: f64,
    high: f64,
    /// Each queue's utilization at `low` and at `high`.
    at_low: Vec<f64>,
    at_high: Vec<f64>,
    /// Each queue's utilization at the marginal last tried.
    tried: Vec<f64>,
}

impl<'a> Search<'a> {
    /// The search over the model's widest bracket (see [`Model::bracket`]).
    fn new(model: &'a Model) -> Self {
        let (low, high) = model.bracket();
        let at = |marginal: f64| -> Vec<f64> {
            model
                .queues
                .iter()
                .map(|queue| queue.utilization_at(marginal, model.ceiling))
                .collect()
        };
        Self {
            model,
            low,
            high,
            at_low: at(low),
            at_high: at(high),
            tried: vec![0.0; model.queues.len()],
        }
    }

    /// The traffic the loads place at `marginal`, inside the bracket: the sum of
    /// [`Model::loads`] up to rounding.
    fn total(&mut self, marginal: f64) -> f64 {
        let model = self.model;
        let mut total = 0.0;
        for (((queue, loads), tried), (lower, upper)) in model
            .queues
            .iter()
            .zip(&model.queue_loads)
            .zip(&mut self.tried)
            .zip(self.at_low.iter().zip(&self.at_high))
        {
            // A bracket closed on one utilization (the queue idle or at the ceiling at both
            // ends, or narrowed past what a float shows) holds the answer: no inversion.
            *tried = if lower >= upper {
                *upper
            } else {
                queue
                    .utilization_between(marginal, model.ceiling, *lower, *upper)
                    .max(*lower)
                    .min(*upper)
            };
            total += loads.at(*tried);
        }
        total
    }

    /// Moves the bracket's low end (`below`: the loads placed less than the demand) or its
    /// high end to `marginal`, the one [`Self::total`] last tried.
    fn narrow(&mut self, marginal: f64, below: bool) {
        if below {
            self.low = marginal;
            self.at_low.copy_from_slice(&self.tried);
        } else {
            self.high = marginal;
            self.at_high.copy_from_slice(&self.tried);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed lab fleet's costs (3 x 2 ms, 2 x 3.3, 9 x 5.5, 1 x 22; 4 cores each) at this
    /// ceiling, asked for `share` of its full capacity.
    fn seed_fleet(share: f64, ceiling: f64) -> Fleet {
        let costs: Vec<f64> = [(0.002, 3), (0.0033, 2), (0.0055, 9), (0.022, 1)]
            .iter()
            .flat_map(|(cost, count)| std::iter::repeat_n(*cost, *count))
            .collect();
        let capacities: Vec<f64> = costs.iter().map(|cost| ceiling * 4.0 / cost).collect();
        let full: f64 = costs.iter().map(|cost| 4.0 / cost).sum();
        Fleet {
            relative_costs: vec![1.0; costs.len()],
            limits: vec![4.0; costs.len()],
            costs,
            capacities,
            demand: share * full,
            ceiling,
        }
    }

    fn utilizations(fleet: &Fleet, loads: &[f64]) -> Vec<f64> {
        loads
            .iter()
            .zip(&fleet.costs)
            .map(|(load, cost)| load * cost / 4.0)
            .collect()
    }

    /// Mean response time of an M/M/c queue (Erlang C), in seconds; infinite when overloaded.
    fn erlang_c_response(rate: f64, service: f64, servers: u32) -> f64 {
        let offered = rate * service;
        let c = f64::from(servers);
        if offered >= c {
            return f64::INFINITY;
        }
        let mut term = 1.0;
        let mut below = 0.0;
        for k in 0..servers {
            if k > 0 {
                term *= offered / f64::from(k);
            }
            below += term;
        }
        let top = term * offered / c * c / (c - offered);
        let waiting = top / (below + top);
        service + waiting * service / (c - offered)
    }

    fn mean_response(fleet: &Fleet, loads: &[f64]) -> f64 {
        let total: f64 = loads.iter().sum();
        loads
            .iter()
            .zip(&fleet.costs)
            .map(|(load, cost)| load * erlang_c_response(*load, *cost, 4))
            .sum::<f64>()
            / total
    }

    const DEFAULT_CEILING: f64 = crate::weighting::params::DEFAULT_UTILIZATION_CEILING;

    #[test]
    fn latency_keeps_room_for_a_rise_while_the_demand_allows() {
        let fleet = seed_fleet(1.0 / 6.0, DEFAULT_CEILING);
        // Without room, a tripled demand at the same split takes the 2 ms pods past full.
        let bare = utilizations(&fleet, &latency(&fleet, 0.002, 1.0).0);
        assert!(3.0 * bare[0] > 1.0, "{bare:?}");
        // With room for x3, it finds every pod under the ceiling.
        let (loads, placements) = latency(&fleet, 0.002, 3.0);
        let total: f64 = loads.iter().sum();
        assert!((total - fleet.demand).abs() < 1e-9 * fleet.demand);
        let roomy = utilizations(&fleet, &loads);
        assert!(
            roomy
                .iter()
                .all(|utilization| 3.0 * utilization <= DEFAULT_CEILING + 1e-9),
            "{roomy:?}"
        );
        assert!(
            matches!(
                placements[0],
                Placement::Latency {
                    tier: 1,
                    bound: Bound::Headroom { rise, .. },
                } if (rise - 3.0).abs() < 1e-9
            ),
            "{placements:?}"
        );
        // As the demand grows the room shrinks (without a jump: the test
        // `latency_is_continuous_in_the_demand` runs with it too), the cheapest pods stay the
        // hottest (the plan never turns into the spread by capacity before the ceiling binds),
        // and from where the demand would take more than `SURGE_ROOM_LIMIT` of what the pods
        // take at the ceiling the plan is the one without room.
        for step in 1..=178 {
            let share = f64::from(step) * 0.005;
            let fleet = seed_fleet(share, DEFAULT_CEILING);
            let roomy = utilizations(&fleet, &latency(&fleet, 0.002, 3.0).0);
            let bare = utilizations(&fleet, &latency(&fleet, 0.002, 1.0).0);
            assert!(
                roomy.iter().all(|u| *u <= DEFAULT_CEILING + 1e-9),
                "{share}"
            );
            if (0.05..0.86).contains(&share) {
                assert!(roomy[0] > roomy[5], "{share}: {roomy:?}");
            }
            if share >= SURGE_ROOM_LIMIT * DEFAULT_CEILING + 0.005 {
                for (with, without) in roomy.iter().zip(&bare) {
                    assert!((with - without).abs() < 1e-6, "{share}: {roomy:?} {bare:?}");
                }
            }
        }
    }

    #[test]
    fn latency_places_the_demand_under_the_ceiling_cheapest_hottest() {
        for share in [0.05, 0.3, 0.5, 0.7, 0.8, 0.85, 0.89] {
            let fleet = seed_fleet(share, DEFAULT_CEILING);
            let (loads, placements) = latency(&fleet, 0.002, 1.0);
            let total: f64 = loads.iter().sum();
            assert!(
                (total - fleet.demand).abs() < 1e-9 * fleet.demand,
                "{share}"
            );
            let utilizations = utilizations(&fleet, &loads);
            for (index, utilization) in utilizations.iter().enumerate() {
                assert!(
                    *utilization <= DEFAULT_CEILING + 1e-9,
                    "{share}: {utilizations:?}"
                );
                let probe = matches!(
                    placements[index],
                    Placement::Latency {
                        bound: Bound::Probe,
                        ..
                    }
                );
                if index > 0 && !probe && fleet.costs[index] > fleet.costs[index - 1] {
                    assert!(*utilization <= utilizations[index - 1], "{utilizations:?}");
                }
            }
            assert!(
                utilizations[0] > utilizations[14],
                "{share}: {utilizations:?}"
            );
            assert!(matches!(placements[0], Placement::Latency { tier: 1, .. }));
        }
        // At 70% of full capacity (every pod at 0.7 would take it): the 2 ms pods near 0.8, the
        // 22 ms pod kept at a probe.
        let fleet = seed_fleet(0.7, DEFAULT_CEILING);
        let (loads, placements) = latency(&fleet, 0.002, 1.0);
        let utilizations = utilizations(&fleet, &loads);
        assert!(
            utilizations[0] > 0.75 && utilizations[0] < 0.85,
            "{utilizations:?}"
        );
        assert!(
            utilizations[5] > 0.55 && utilizations[5] < 0.7,
            "{utilizations:?}"
        );
        assert_eq!(
            placements[14],
            Placement::Latency {
                tier: 4,
                bound: Bound::Probe
            }
        );
    }

    #[test]
    fn latency_beats_equal_utilization_on_erlang_c() {
        // Checked on a queue model the plan was not derived from (M/M/4 per pod, Erlang C), at
        // every load, the old 0.7 ceiling's whole capacity (70% of full) among them.
        for share in [0.1, 0.3, 0.5, 0.7, 0.8, 0.85] {
            let fleet = seed_fleet(share, DEFAULT_CEILING);
            let planned = mean_response(&fleet, &latency(&fleet, 0.002, 1.0).0);
            let even = mean_response(&fleet, &spread(&fleet));
            println!(
                "{share}: mean response {:.2} ms planned, {:.2} ms at equal utilization",
                planned * 1e3,
                even * 1e3
            );
            assert!(planned < even, "{share}: {planned} vs {even}");
        }
        // And against any other split nearby: moving 1% of the demand between two pods of
        // different costs never lowers the modelled mean.
        let fleet = seed_fleet(0.7, DEFAULT_CEILING);
        let loads = latency(&fleet, 0.0, 1.0).0;
        let best = mean_response(&fleet, &loads);
        for (from, to) in [(0, 5), (5, 0), (3, 5), (5, 3), (0, 3)] {
            let mut moved = loads.clone();
            let amount = 0.01 * fleet.demand;
            moved[from] -= amount;
            moved[to] += amount;
            assert!(
                mean_response(&fleet, &moved) > best * 0.999,
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn latency_is_continuous_in_the_demand() {
        // A step of demand moves no load by more than the step, and none down: no endpoint
        // jumps when another joins, reaches the ceiling or the plan turns into a spread.
        // With room for a rise too, where the room shrinks.
        for headroom in [1.0, 3.0] {
            let mut before: Option<(f64, Vec<f64>)> = None;
            for step in 1..=1100 {
                let share = f64::from(step) * 0.001;
                let fleet = seed_fleet(share, DEFAULT_CEILING);
                let loads = latency(&fleet, 0.002, headroom).0;
                if let Some((demand, then)) = &before {
                    let grown = fleet.demand - demand;
                    for (now, then) in loads.iter().zip(then) {
                        let moved = now - then;
                        assert!(
                            moved >= -1e-9 * fleet.demand && moved <= grown * (1.0 + 1e-6),
                            "{headroom}, {share}: {then} -> {now} for {grown} more"
                        );
                    }
                }
                before = Some((fleet.demand, loads));
            }
        }
    }

    #[test]
    fn past_the_ceiling_the_demand_is_spread_in_proportion() {
        for ceiling in [0.7, DEFAULT_CEILING] {
            let fleet = seed_fleet(ceiling + 0.01, ceiling);
            let (loads, placements) = latency(&fleet, 0.002, 1.0);
            let spread = utilizations(&fleet, &loads);
            for utilization in &spread {
                assert!((utilization - (ceiling + 0.01)).abs() < 1e-9, "{spread:?}");
            }
            assert_eq!(placements[0], Placement::Spread { ceiling });
            // Just under it, every pod close to the ceiling and none above.
            let fleet = seed_fleet(ceiling - 0.001, ceiling);
            let utilizations = utilizations(&fleet, &latency(&fleet, 0.002, 1.0).0);
            for utilization in &utilizations {
                assert!(*utilization <= ceiling + 1e-9, "{utilizations:?}");
            }
        }
    }

    #[test]
    fn probes_keep_every_endpoint_measured() {
        let fleet = seed_fleet(0.05, DEFAULT_CEILING);
        let (loads, placements) = latency(&fleet, 0.002, 1.0);
        let probe = 0.002 * fleet.demand / 15.0;
        assert!((loads[14] - probe).abs() < 1e-9 * probe, "{loads:?}");
        assert_eq!(
            placements[14],
            Placement::Latency {
                tier: 4,
                bound: Bound::Probe
            }
        );
        assert!(loads[0] > 0.3 * fleet.demand, "{loads:?}");
    }

    #[test]
    fn alike_endpoints_get_alike_traffic() {
        // Costs within the tier tolerance are modelled at their pooled cost: equal utilization
        // inside a tier, so noise between them cannot reorder the plan.
        let mut fleet = seed_fleet(0.3, DEFAULT_CEILING);
        fleet.costs[1] *= 1.1;
        fleet.capacities[1] /= 1.1;
        let utilizations = utilizations(&fleet, &latency(&fleet, 0.002, 1.0).0);
        assert!(
            (utilizations[0] - utilizations[1]).abs() < 1e-9,
            "{utilizations:?}"
        );
    }

    /// Fleets unlike the seed one: suspects capped (a most below the ceiling), costs spread
    /// across tiers, an endpoint capped at nothing and CPU limits of 0.5 and 0.001 cores.
    fn uneven_fleets() -> Vec<Fleet> {
        let mut fleets = Vec::new();
        for share in [0.05, 0.3, 0.7, 0.85] {
            let mut capped = seed_fleet(share, DEFAULT_CEILING);
            for index in [0, 4, 9] {
                capped.capacities[index] *= 0.3;
            }
            fleets.push(capped);
            let mut odd = seed_fleet(share, DEFAULT_CEILING);
            odd.capacities[3] = 0.0;
            odd.limits[7] = 0.5;
            odd.capacities[7] = DEFAULT_CEILING * 0.5 / odd.costs[7];
            odd.limits[10] = 0.001;
            odd.capacities[10] = DEFAULT_CEILING * 0.001 / odd.costs[10];
            for (index, cost) in odd.costs.iter_mut().enumerate() {
                *cost *= 1.0 + 0.07 * index as f64;
            }
            fleets.push(odd);
        }
        fleets
    }

    /// Runs `check` on every test fleet (the uneven ones and the seed fleet at several loads)
    /// with every probe share: `(load share, probe share, fleet)`.
    fn each_fleet(mut check: impl FnMut(f64, f64, &Fleet)) {
        for share in [0.05, 0.3, 0.5, 0.7, 0.85, 0.89] {
            for probe_share in [0.0, 0.002, 0.5] {
                let mut fleets = uneven_fleets();
                fleets.push(seed_fleet(share, DEFAULT_CEILING));
                for fleet in &fleets {
                    check(share, probe_share, fleet);
                }
            }
        }
    }

    /// The latency plan's model of `fleet` with probes of `probe_share` of the demand.
    fn model(fleet: &Fleet, probe_share: f64) -> Model {
        let ceiling = fleet.ceiling.min(MAX_MODELLED_UTILIZATION);
        let full = fleet.full_capacities();
        let most = most_traffic(fleet, ceiling, &full);
        let probe = probe_share * fleet.demand / fleet.costs.len() as f64;
        Model::new(fleet, ceiling, full, most, probe)
    }

    #[test]
    fn a_queue_load_is_the_sum_of_its_endpoints() {
        each_fleet(|share, probe_share, fleet| {
            let model = model(fleet, probe_share);
            for (queue, loads) in model.queue_loads.iter().enumerate() {
                // A grid, each breakpoint and the ceiling itself.
                let mut at: Vec<f64> = (0..=200)
                    .map(|step| model.ceiling * f64::from(step) / 200.0)
                    .collect();
                at.extend(loads.joins.iter().map(|join| join.0));
                at.extend(loads.fills.iter().map(|fill| fill.0));
                for utilization in at {
                    let summed: f64 = (0..fleet.costs.len())
                        .filter(|index| model.queue_of[*index] == queue)
                        .map(|index| {
                            load(
                                utilization.min(model.ceiling),
                                model.full[index],
                                model.most[index],
                                model.probe,
                            )
                        })
                        .sum();
                    let found = loads.at(utilization);
                    assert!(
                        (found - summed).abs() <= 1e-12 * summed.max(1e-300),
                        "{share} {probe_share} {utilization}: {found} vs {summed}"
                    );
                }
            }
        });
    }

    #[test]
    fn the_search_total_is_the_sum_of_the_loads() {
        each_fleet(|share, probe_share, fleet| {
            let model = model(fleet, probe_share);
            let mut search = Search::new(&model);
            for _ in 0..MARGINAL_STEPS {
                let middle = 0.5 * (search.low + search.high);
                if middle <= search.low || middle >= search.high {
                    break;
                }
                let summed: f64 = model.loads(middle).iter().sum();
                let total = search.total(middle);
                assert!(
                    (total - summed).abs() <= 1e-9 * summed,
                    "{share} {probe_share} {middle}: {total} vs {summed}"
                );
                search.narrow(middle, total < fleet.demand);
            }
        });
    }

    #[test]
    fn latency_matches_a_search_over_every_load() {
        // The plan as a bisection summing every endpoint's load at each step, far past the
        // precision the plan stops at.
        // `None` past the ceiling, where the plan is a spread.
        fn reference(fleet: &Fleet, probe_share: f64) -> Option<Vec<f64>> {
            let model = model(fleet, probe_share);
            if fleet.demand >= model.most.iter().sum::<f64>() {
                return None;
            }
            let (mut low, mut high) = model.bracket();
            for _ in 0..200 {
                let middle = 0.5 * (low + high);
                if middle <= low || middle >= high {
                    break;
                }
                if model.loads(middle).iter().sum::<f64>() < fleet.demand {
                    low = middle;
                } else {
                    high = middle;
                }
            }
            let (below, above) = (model.loads(low), model.loads(high));
            let (under, over) = (below.iter().sum::<f64>(), above.iter().sum::<f64>());
            let fraction = if over > under {
                ((fleet.demand - under) / (over - under)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            Some(
                below
                    .iter()
                    .zip(&above)
                    .map(|(low, high)| low + fraction * (high - low))
                    .collect(),
            )
        }
        let mut fleets = uneven_fleets();
        for share in [0.05, 0.3, 0.5, 0.7, 0.8, 0.85, 0.89] {
            fleets.push(seed_fleet(share, DEFAULT_CEILING));
        }
        let mut searched = 0;
        for fleet in fleets {
            for probe_share in [0.0, 0.002] {
                let Some(expected) = reference(&fleet, probe_share) else {
                    continue;
                };
                searched += 1;
                let planned = latency(&fleet, probe_share, 1.0).0;
                for (index, (planned, expected)) in planned.iter().zip(&expected).enumerate() {
                    assert!(
                        (planned - expected).abs() <= 1e-6 * expected.max(1e-9 * fleet.demand),
                        "{} {probe_share} #{index}: {planned} vs {expected}",
                        fleet.demand
                    );
                }
            }
        }
        // Past their ceiling (a spread): both uneven fleets at 85%, the odd one at 70%.
        assert!(searched >= 24, "{searched}");
    }

    #[test]
    fn tiers_order_by_cost_then_index() {
        let costs = [
            3.0,
            1.0,
            1.1,
            -0.0,
            0.0,
            5.0,
            1.0,
            1e-300,
            f64::INFINITY,
            4.0,
        ];
        let tiers = tiers(&costs);
        let mut order: Vec<usize> = (0..costs.len()).collect();
        order.sort_by(|left, right| costs[*left].total_cmp(&costs[*right]).then(left.cmp(right)));
        assert_eq!(tiers.concat(), order);
        assert_eq!(tiers[0], vec![3, 4]);
        assert_eq!(tiers[1], vec![7]);
        assert_eq!(tiers[2], vec![1, 6, 2]);
    }

    #[test]
    fn the_median_without_one_matches_removing_it() {
        use crate::weighting::plan::percentile;
        let sorted = [1.0, 2.0, 2.0, 5.0, 7.0, 9.0];
        for position in 0..sorted.len() {
            let mut others = sorted.to_vec();
            others.remove(position);
            let expected = percentile(&others, 50.0).unwrap_or_default();
            assert_eq!(median_without(&sorted, position), expected, "{position}");
        }
        assert_eq!(median_without(&[3.0], 0), 0.0);
    }
}
