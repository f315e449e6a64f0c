//! Limits applied after planning: the slow-start ramp and Envoy's per-locality weight sum.

use std::{borrow::Borrow, collections::BTreeMap, time::Duration};

use super::observe::Observation;
use super::plan::bounds;
use super::{ClusterMemory, Params, Weight};
use crate::model::{Endpoint, Locality};

/// Largest sum of weights Envoy accepts in one locality (the sum must stay below 2^32).
pub(crate) const LOCALITY_SUM_LIMIT: u64 = u32::MAX as u64;

/// Ramps endpoints that appeared after the cluster's first tick from the minimum weight up to
/// their computed weight, linearly over `params.slow_start`.
pub(crate) fn slow_start(
    weights: &mut [Weight],
    observations: &[Observation],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) {
    if params.slow_start.is_zero() {
        return;
    }
    let (low, _) = bounds(params);
    for (weight, observation) in weights.iter_mut().zip(observations) {
        let (first_seen, initial) = match &observation.remembered {
            Some(remembered) => (remembered.first_seen, remembered.initial),
            None => (now, memory.endpoints.is_empty()),
        };
        let elapsed = now.saturating_sub(first_seen);
        if initial || elapsed >= params.slow_start {
            continue;
        }
        let progress = elapsed.as_secs_f64() / params.slow_start.as_secs_f64();
        let target = f64::from(weight.weight.max(low));
        let ramped = f64::from(low) + (target - f64::from(low)) * progress;
        weight.weight = ramped.round().clamp(f64::from(low), target) as u32;
        weight.reason.ramped(progress * 100.0, target);
    }
}

/// Scales down any locality whose weights would sum to 2^32 or more, keeping every weight >= 1.
///
/// When the whole cluster's sum is within the limit no locality can exceed it, so the usual case
/// skips grouping by locality (comparing localities for every endpoint was a fifth of a tick).
pub(crate) fn guard_locality_sums<E: Borrow<Endpoint>>(weights: &mut [Weight], endpoints: &[E]) {
    let mut total: u64 = 0;
    for weight in weights.iter_mut() {
        weight.weight = weight.weight.max(1);
        total += u64::from(weight.weight);
    }
    if total <= LOCALITY_SUM_LIMIT {
        return;
    }
    let mut sums: BTreeMap<&Locality, (u64, u64)> = BTreeMap::new();
    for (weight, endpoint) in weights.iter_mut().zip(endpoints) {
        weight.weight = weight.weight.max(1);
        let entry = sums.entry(&endpoint.borrow().locality).or_default();
        entry.0 += u64::from(weight.weight);
        entry.1 += 1;
    }
    for (weight, endpoint) in weights.iter_mut().zip(endpoints) {
        let Some(&(sum, count)) = sums.get(&endpoint.borrow().locality) else {
            continue;
        };
        if sum <= LOCALITY_SUM_LIMIT {
            continue;
        }
        // floor(w * budget / sum) sums to at most `budget`; the `max(1)` adds at most `count`.
        let budget = LOCALITY_SUM_LIMIT.saturating_sub(count);
        let scaled = u128::from(weight.weight) * u128::from(budget) / u128::from(sum);
        weight.weight = u32::try_from(scaled).unwrap_or(u32::MAX).max(1);
        weight.reason.scale_down();
    }
}
