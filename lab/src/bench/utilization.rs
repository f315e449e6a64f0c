//! The busiest pod of each window, from CPU counters sampled at the window edges.

use std::collections::BTreeMap;

/// adaptive-eds's default `weighting.utilization_ceiling`: the `latency` plan keeps every pod
/// under it while the fleet can take the load below it, and the reports compare each window's
/// busiest pod with it.
pub const CEILING: f64 = adaptive_eds::weighting::params::DEFAULT_UTILIZATION_CEILING;

/// The most utilized pod of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Busiest {
    /// Pod name.
    pub pod: String,
    /// Its CPU in use over its cores during the window.
    pub utilization: f64,
}

/// For each pair of consecutive samples of the pods' busy-seconds counters (`None`: the
/// sample failed), the pod with the highest utilization over the `seconds` between them;
/// pods missing from either sample (not started yet, stopped) are left out.
pub fn busiest_per_window(
    samples: &[Option<BTreeMap<String, f64>>],
    cores: &BTreeMap<String, u32>,
    seconds: f64,
) -> Vec<Option<Busiest>> {
    samples
        .windows(2)
        .map(|pair| {
            let (Some(before), Some(after)) = (&pair[0], &pair[1]) else {
                return None;
            };
            after
                .iter()
                .filter_map(|(pod, end)| {
                    let start = before.get(pod)?;
                    let cores = f64::from(*cores.get(pod)?);
                    Some(Busiest {
                        pod: pod.clone(),
                        utilization: (end - start) / seconds / cores,
                    })
                })
                .max_by(|a, b| a.utilization.total_cmp(&b.utilization))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(values: &[(&str, f64)]) -> Option<BTreeMap<String, f64>> {
        Some(
            values
                .iter()
                .map(|(pod, value)| ((*pod).to_owned(), *value))
                .collect(),
        )
    }

    #[test]
    fn the_busiest_pod_of_each_window_over_its_cores() {
        let cores: BTreeMap<String, u32> = [("a".to_owned(), 4), ("b".to_owned(), 1)].into();
        let samples = vec![
            sample(&[("a", 0.0), ("b", 0.0)]),
            // a: 10 busy seconds over 5 s on 4 cores = 0.5; b: 3 over 5 s on 1 core = 0.6.
            sample(&[("a", 10.0), ("b", 3.0)]),
            // b stopped: only a counts (16 over 5 s on 4 cores = 0.8).
            sample(&[("a", 26.0)]),
            None,
            sample(&[("a", 30.0)]),
        ];
        let busiest = busiest_per_window(&samples, &cores, 5.0);
        assert_eq!(busiest.len(), 4);
        let first = busiest[0].as_ref().unwrap();
        assert_eq!(first.pod, "b");
        assert!((first.utilization - 0.6).abs() < 1e-9);
        let second = busiest[1].as_ref().unwrap();
        assert_eq!(second.pod, "a");
        assert!((second.utilization - 0.8).abs() < 1e-9);
        assert!(busiest[2].is_none() && busiest[3].is_none());
    }
}
