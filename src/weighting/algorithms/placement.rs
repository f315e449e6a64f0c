//! Placing a cluster's demand on its endpoints for an objective: in proportion to capacity
//! (`balance`), cheapest first up to the ceiling (`latency`), past the ceiling by equal marginal
//! latency, with suspects capped.

use super::capacity::Fleet;
use crate::weighting::plan::FreshEndpoint;

/// Endpoints whose cost is within this fraction of the cheapest of a tier are filled together,
/// in proportion to their capacity, so that measurement noise between equally cheap endpoints
/// cannot reorder the fill from tick to tick. At 10%, one of twelve equal pods on the harsh lab
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
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|left, right| costs[*left].total_cmp(&costs[*right]).then(left.cmp(right)));
    let mut tiers: Vec<Vec<usize>> = Vec::new();
    for index in order {
        match tiers.last_mut() {
            Some(tier) if costs[index] <= costs[tier[0]] * (1.0 + COST_TIER_TOLERANCE) => {
                tier.push(index)
            }
            _ => tiers.push(vec![index]),
        }
    }
    tiers
}

/// `latency`: fill the cheapest tier up to the ceiling, spill the rest over the next cheapest;
/// the endpoints outside the plan keep at most `probe_share` of the demand in all, in equal
/// probes, so their costs stay measured. When the whole cluster at the ceiling cannot take the demand, spread it in
/// proportion to capacity.
///
/// Returns the planned traffic and each endpoint's tier rank (1 = cheapest).
pub(crate) fn fill(fleet: &Fleet, probe_share: f64) -> (Vec<f64>, Vec<Option<usize>>) {
    let tiers = tiers(&fleet.costs);
    let count = fleet.costs.len();
    let budget = probe_share.max(0.0) * fleet.demand;
    let mut ranks = vec![None; count];
    for (rank, tier) in tiers.iter().enumerate() {
        for index in tier {
            ranks[*index] = Some(rank + 1);
        }
    }
    let mut loads = vec![0.0; count];
    let mut filled = 0.0;
    let mut placed = 0;
    for (position, tier) in tiers.iter().enumerate() {
        let tier_capacity: f64 = tier.iter().map(|index| fleet.capacities[*index]).sum();
        // The budget is shared by this tier and all later ones, so a tier that ends up with
        // little traffic is never planned below the probes after it.
        let probe = budget / (count - placed) as f64;
        placed += tier.len();
        let need = (fleet.demand - (count - placed) as f64 * probe).max(0.0);
        if filled + tier_capacity >= need {
            let remaining = (need - filled).max(0.0);
            for index in tier {
                let load = remaining * fleet.capacities[*index] / tier_capacity;
                loads[*index] = load.max(probe);
            }
            for index in tiers[position + 1..].iter().flatten() {
                loads[*index] = probe;
            }
            return (loads, ranks);
        }
        for index in tier {
            loads[*index] = fleet.capacities[*index];
        }
        filled += tier_capacity;
    }
    (above_ceiling(fleet).unwrap_or_else(|| spread(fleet)), ranks)
}

/// `latency` when the demand passes what the cluster takes at the ceiling: every endpoint at
/// the ceiling, and the excess placed where it adds the least expected latency. `None` when the
/// demand reaches the cluster's full capacity (then only a spread in proportion is left).
///
/// Model: an endpoint's latency is its cost per request up to the ceiling and grows like an
/// M/M/1 queue on the capacity left above it (`r = (1 - ceiling) * m`, `m` its capacity at full
/// utilization). Minimising the traffic-weighted mean latency equalizes the marginal latency
/// `d(load * latency)/d(load)`, which gives each endpoint the excess `r - k * sqrt(limit * r)`
/// (with `limit = cost * m`), `k` set so the excesses add up to the demand. The marginal latency
/// at the ceiling is `cost / (1 - ceiling)`, so the cheapest endpoints take the excess first and
/// are loaded harder than slow ones: a 22 ms pod at 75% adds far more queueing than a 2 ms pod at
/// 80%. At the ceiling itself the excess is zero, so the plan is continuous with [`fill`]'s, and
/// every endpoint stays below full utilization.
pub(crate) fn above_ceiling(fleet: &Fleet) -> Option<Vec<f64>> {
    let ceiling = fleet.ceiling;
    if !(ceiling > 0.0 && ceiling < 1.0) {
        return None;
    }
    let full: f64 = fleet.capacities.iter().sum::<f64>() / ceiling;
    let at_ceiling: f64 = fleet.capacities.iter().sum();
    if !(fleet.demand < full && fleet.demand >= at_ceiling) {
        return None;
    }
    let excess = fleet.demand - at_ceiling;
    // Per endpoint: room above the ceiling `r` and `sqrt(limit * r)`.
    let room: Vec<f64> = fleet
        .capacities
        .iter()
        .map(|capacity| capacity / ceiling * (1.0 - ceiling))
        .collect();
    let roots: Vec<f64> = room
        .iter()
        .zip(&fleet.capacities)
        .zip(&fleet.costs)
        .map(|((room, capacity), cost)| (cost * capacity / ceiling * room).sqrt())
        .collect();
    // Cheapest marginal first: sqrt(r / limit) descending is cost ascending.
    let mut order: Vec<usize> = (0..room.len()).filter(|index| room[*index] > 0.0).collect();
    order.sort_by(|left, right| {
        fleet.costs[*left]
            .total_cmp(&fleet.costs[*right])
            .then(left.cmp(right))
    });
    let mut active = order.len();
    let mut k = 0.0;
    while active > 0 {
        let (room_sum, root_sum) = order[..active]
            .iter()
            .fold((0.0, 0.0), |(room_sum, root_sum), index| {
                (room_sum + room[*index], root_sum + roots[*index])
            });
        if root_sum <= 0.0 {
            return None;
        }
        k = (room_sum - excess) / root_sum;
        let last = order[active - 1];
        if room[last] - k * roots[last] >= 0.0 {
            break;
        }
        active -= 1;
    }
    if active == 0 {
        return None;
    }
    let mut loads = fleet.capacities.clone();
    for index in &order[..active] {
        loads[*index] += (room[*index] - k * roots[*index]).max(0.0);
    }
    Some(loads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed lab fleet's costs (3 x 2 ms, 2 x 3.3, 9 x 5.5, 1 x 22; 4 cores each) at the
    /// 0.7 ceiling, asked for `share` of its full capacity.
    fn seed_fleet(share: f64) -> Fleet {
        let costs: Vec<f64> = [(0.002, 3), (0.0033, 2), (0.0055, 9), (0.022, 1)]
            .iter()
            .flat_map(|(cost, count)| std::iter::repeat_n(*cost, *count))
            .collect();
        let capacities: Vec<f64> = costs.iter().map(|cost| 0.7 * 4.0 / cost).collect();
        let full: f64 = costs.iter().map(|cost| 4.0 / cost).sum();
        Fleet {
            relative_costs: vec![1.0; costs.len()],
            costs,
            capacities,
            demand: share * full,
            ceiling: 0.7,
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

    #[test]
    fn above_the_ceiling_starts_where_fill_ends() {
        // Just past what the fleet takes at the ceiling (70% of full): every pod at 0.7.
        let fleet = seed_fleet(0.7001);
        let loads = above_ceiling(&fleet).expect("a plan");
        for utilization in utilizations(&fleet, &loads) {
            assert!((utilization - 0.7).abs() < 0.005, "{utilization}");
        }
        // Below it, fill's plan holds (no excess to place).
        assert_eq!(above_ceiling(&seed_fleet(0.69)), None);
        // At or past full capacity only a proportional spread is left.
        assert_eq!(above_ceiling(&seed_fleet(1.0)), None);
    }

    #[test]
    fn above_the_ceiling_fast_pods_are_loaded_harder_and_none_is_full() {
        for share in [0.75, 0.8, 0.9, 0.97] {
            let fleet = seed_fleet(share);
            let loads = above_ceiling(&fleet).expect("a plan");
            let total: f64 = loads.iter().sum();
            assert!((total - fleet.demand).abs() < 1e-6 * fleet.demand);
            let utilizations = utilizations(&fleet, &loads);
            for (index, utilization) in utilizations.iter().enumerate() {
                assert!(
                    *utilization >= 0.7 - 1e-9 && *utilization < 1.0,
                    "{utilizations:?}"
                );
                if index > 0 && fleet.costs[index] > fleet.costs[index - 1] {
                    assert!(*utilization <= utilizations[index - 1], "{utilizations:?}");
                }
            }
            assert!(
                utilizations[0] > utilizations[14],
                "{share}: {utilizations:?}"
            );
        }
    }

    #[test]
    fn above_the_ceiling_beats_a_proportional_spread_on_erlang_c() {
        // Checked on a queue model the plan was not derived from (M/M/4 per pod).
        for share in [0.75, 0.8, 0.9] {
            let fleet = seed_fleet(share);
            let planned = mean_response(&fleet, &above_ceiling(&fleet).expect("a plan"));
            let spread = mean_response(&fleet, &spread(&fleet));
            println!(
                "{share}: mean response {:.2} ms planned, {:.2} ms in proportion",
                planned * 1e3,
                spread * 1e3
            );
            assert!(planned < spread, "{share}: {planned} vs {spread}");
        }
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
