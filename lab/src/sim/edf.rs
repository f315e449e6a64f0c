//! Earliest-deadline-first scheduler, as Envoy uses for weighted host selection.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Envoy's EDF scheduler: each entry is due at `current_time + 1 / weight`; picking pops
/// the earliest deadline and re-adds the entry with a freshly computed weight.
#[derive(Debug, Clone, Default)]
pub struct EdfScheduler {
    heap: BinaryHeap<Reverse<Entry>>,
    current_time: f64,
    next_order: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: f64,
    order: u64,
    index: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.order.cmp(&other.order))
    }
}

impl EdfScheduler {
    /// Builds a scheduler over `weights` (index = endpoint); zero weights are left out.
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let entries: Vec<Reverse<Entry>> = weights
            .into_iter()
            .enumerate()
            .filter(|(_, weight)| *weight > 0.0 && weight.is_finite())
            .filter_map(|(index, weight)| {
                let index = u32::try_from(index).ok()?;
                Some(Reverse(Entry {
                    deadline: 1.0 / weight,
                    order: u64::from(index),
                    index,
                }))
            })
            .collect();
        Self {
            next_order: entries.len() as u64,
            heap: BinaryHeap::from(entries),
            current_time: 0.0,
        }
    }

    /// Builds a scheduler in the state it would reach after `picks` picks with fixed
    /// weights, without doing them one by one (Envoy's `createWithPicks`). Envoy passes a
    /// random per-balancer seed here so that balancers start at different points of the
    /// rotation, even over many full cycles.
    pub fn with_picks(weights: &[f64], picks: u32) -> Self {
        /// Envoy caps the emulated picks at `u32::MAX / 10`.
        const MAX_PICKS: u32 = 429_496_729;
        /// Envoy's epsilon keeps weights that are multiples of each other exact.
        const EPSILON: f64 = 1e-13;
        let picks = picks % MAX_PICKS;
        let padded: Vec<f64> = weights
            .iter()
            .map(|&weight| {
                if weight > 0.0 && weight.is_finite() {
                    weight + EPSILON
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = padded.iter().sum();
        if total <= 0.0 {
            return Self::default();
        }
        let share = f64::from(picks) / total;
        let mut current_time: f64 = 0.0;
        let mut done: u64 = 0;
        let mut entries = Vec::with_capacity(padded.len());
        for (index, &weight) in padded.iter().enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            if weight <= 0.0 {
                continue;
            }
            let mut whole = (weight * share) as u64;
            if whole > 0 && whole as f64 / weight >= share {
                whole -= 1;
            }
            current_time = current_time.max(whole as f64 / weight);
            entries.push(Reverse(Entry {
                deadline: (whole + 1) as f64 / weight,
                order: u64::from(index),
                index,
            }));
            done += whole;
        }
        let mut scheduler = Self {
            next_order: padded.len() as u64,
            heap: BinaryHeap::from(entries),
            current_time,
        };
        for _ in done..u64::from(picks) {
            scheduler.pick_and_add(|index| padded[index]);
        }
        scheduler
    }

    /// Adds an entry due one period (`1 / weight`) from the scheduler's current time.
    pub fn add(&mut self, index: u32, weight: f64) {
        if !(weight > 0.0 && weight.is_finite()) {
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(Entry {
            deadline: self.current_time + 1.0 / weight,
            order,
            index,
        }));
    }

    /// Pops the earliest entry and re-adds it with `weight_of(index)`; `None` when empty.
    pub fn pick_and_add(&mut self, mut weight_of: impl FnMut(usize) -> f64) -> Option<usize> {
        let Reverse(entry) = self.heap.pop()?;
        self.current_time = entry.deadline;
        self.add(entry.index, weight_of(entry.index as usize));
        Some(entry.index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_in_proportion_to_weight() {
        let weights = [1.0, 2.0, 5.0];
        let mut scheduler = EdfScheduler::new(weights);
        let mut counts = [0u32; 3];
        for _ in 0..800 {
            let index = scheduler.pick_and_add(|index| weights[index]).unwrap();
            counts[index] += 1;
        }
        assert_eq!(counts, [100, 200, 500]);
    }

    #[test]
    fn with_picks_matches_picking_one_by_one() {
        let weights = [1.0, 2.0, 5.0, 3.5];
        for picks in [0, 1, 7, 100, 12_345] {
            let mut stepped = EdfScheduler::new(weights);
            for _ in 0..picks {
                stepped.pick_and_add(|index| weights[index]);
            }
            let mut jumped = EdfScheduler::with_picks(&weights, picks);
            let next_stepped: Vec<usize> = (0..20)
                .filter_map(|_| stepped.pick_and_add(|index| weights[index]))
                .collect();
            let next_jumped: Vec<usize> = (0..20)
                .filter_map(|_| jumped.pick_and_add(|index| weights[index]))
                .collect();
            let count =
                |picks: &[usize], index: usize| picks.iter().filter(|&&pick| pick == index).count();
            for index in 0..weights.len() {
                // Ties may break differently, so compare how often each entry comes up.
                let difference = count(&next_stepped, index).abs_diff(count(&next_jumped, index));
                assert!(
                    difference <= 1,
                    "picks {picks}: {next_stepped:?} vs {next_jumped:?}"
                );
            }
        }
    }

    #[test]
    fn empty_scheduler_picks_nothing() {
        let mut scheduler = EdfScheduler::new([0.0, 0.0]);
        assert_eq!(scheduler.pick_and_add(|_| 1.0), None);
    }
}
