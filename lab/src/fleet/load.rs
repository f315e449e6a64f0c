//! Reading fleet and scenario files with errors that name the offending field.

use super::{Action, Failing, Fleet, Scenario};
use std::path::{Path, PathBuf};

/// Why a fleet or scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that was asked for.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema; `field` is the path to the bad field.
    #[error("{origin}: field `{field}`: {message}")]
    Parse {
        /// File name or `<string>`.
        origin: String,
        /// Dotted path to the field, such as `groups[1].service_time.sigma`.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// The YAML is well formed but the values make no sense.
    #[error("{origin}: {message}")]
    Invalid {
        /// File name or `<string>`.
        origin: String,
        /// What was wrong.
        message: String,
    },
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, FleetError> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| FleetError::Parse {
        origin: origin.to_owned(),
        field: error.path().to_string(),
        message: error.inner().to_string(),
    })
}

fn read(path: &Path) -> Result<String, FleetError> {
    std::fs::read_to_string(path).map_err(|source| FleetError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses and validates a fleet from YAML text; `origin` names the source in errors.
pub fn parse_fleet(text: &str, origin: &str) -> Result<Fleet, FleetError> {
    let fleet: Fleet = parse_yaml(text, origin)?;
    validate_fleet(&fleet, origin)?;
    Ok(fleet)
}

/// Reads, parses and validates a fleet file.
pub fn load_fleet(path: &Path) -> Result<Fleet, FleetError> {
    parse_fleet(&read(path)?, &path.display().to_string())
}

/// Parses and validates a scenario from YAML text against the fleet it will drive.
pub fn parse_scenario(text: &str, origin: &str, fleet: &Fleet) -> Result<Scenario, FleetError> {
    let mut scenario: Scenario = parse_yaml(text, origin)?;
    scenario.events.sort_by_key(|event| event.at);
    validate_scenario(&scenario, origin, fleet)?;
    Ok(scenario)
}

/// Reads, parses and validates a scenario file.
pub fn load_scenario(path: &Path, fleet: &Fleet) -> Result<Scenario, FleetError> {
    parse_scenario(&read(path)?, &path.display().to_string(), fleet)
}

fn invalid(origin: &str, message: String) -> FleetError {
    FleetError::Invalid {
        origin: origin.to_owned(),
        message,
    }
}

fn validate_fleet(fleet: &Fleet, origin: &str) -> Result<(), FleetError> {
    if fleet.pods().is_empty() {
        return Err(invalid(origin, "the fleet has no pods".to_owned()));
    }
    for (index, group) in fleet.groups.iter().enumerate() {
        if group.cores == 0 {
            return Err(invalid(
                origin,
                format!("groups[{index}].cores must be at least 1"),
            ));
        }
        group
            .service_time
            .validate()
            .map_err(|error| invalid(origin, format!("groups[{index}].service_time: {error}")))?;
        if let Some(failing) = &group.failing {
            failing
                .validate()
                .map_err(|error| invalid(origin, format!("groups[{index}].failing: {error}")))?;
        }
    }
    let mut names: Vec<String> = fleet.pods().into_iter().map(|pod| pod.name).collect();
    names.sort();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(invalid(
            origin,
            format!("pod name {} appears twice", pair[0]),
        ));
    }
    Ok(())
}

fn validate_scenario(scenario: &Scenario, origin: &str, fleet: &Fleet) -> Result<(), FleetError> {
    let pods = fleet.pods();
    for (index, event) in scenario.events.iter().enumerate() {
        let (factor, pod) = match &event.action {
            Action::SetSlowdown { pod, factor } => (*factor, Some(pod)),
            Action::SetLoadFactor { factor } => (*factor, None),
            Action::RollingRestart { every, .. } => {
                if every.is_zero() {
                    return Err(invalid(
                        origin,
                        format!("events[{index}]: rolling_restart every must be > 0"),
                    ));
                }
                let clash = fleet
                    .pods()
                    .iter()
                    .any(|pod| pod.name.contains(super::REPLACEMENT_SUFFIX));
                if clash {
                    return Err(invalid(
                        origin,
                        format!(
                            "events[{index}]: rolling_restart names new pods <group>{}-<i>, and the fleet already has such a name",
                            super::REPLACEMENT_SUFFIX
                        ),
                    ));
                }
                (1.0, None)
            }
            Action::SetFailing {
                pod,
                ratio,
                after_ms,
            } => {
                let failing = Failing {
                    ratio: *ratio,
                    after_ms: *after_ms,
                };
                failing
                    .validate()
                    .map_err(|error| invalid(origin, format!("events[{index}]: {error}")))?;
                (1.0, Some(pod))
            }
        };
        if !(factor.is_finite() && factor > 0.0) {
            return Err(invalid(
                origin,
                format!("events[{index}]: factor must be > 0, got {factor}"),
            ));
        }
        if let Some(pod) = pod {
            if !pods.iter().any(|candidate| &candidate.name == pod) {
                return Err(invalid(
                    origin,
                    format!("events[{index}]: no pod named {pod} in the fleet"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FLEET: &str = "namespace: lab\ngroups:\n  - name: fib25\n    replicas: 2\n    cores: 4\n    service_time: { mean_ms: 2.0, sigma: 0.2 }\n";

    #[test]
    fn parses_a_fleet() {
        let fleet = parse_fleet(FLEET, "test").unwrap();
        let names: Vec<String> = fleet.pods().into_iter().map(|pod| pod.name).collect();
        assert_eq!(names, ["fib25-0", "fib25-1"]);
        assert!(!fleet.orca);
    }

    #[test]
    fn unknown_field_error_names_the_field() {
        let text = FLEET.replace("sigma: 0.2", "sigma: 0.2, sigmaa: 1");
        let message = parse_fleet(&text, "test").unwrap_err().to_string();
        assert!(message.contains("groups[0].service_time"), "{message}");
        assert!(message.contains("sigmaa"), "{message}");
    }

    #[test]
    fn wrong_type_error_names_the_field() {
        let text = FLEET.replace("cores: 4", "cores: four");
        let message = parse_fleet(&text, "test").unwrap_err().to_string();
        assert!(message.contains("groups[0].cores"), "{message}");
    }

    #[test]
    fn scenario_rejects_unknown_pod() {
        let fleet = parse_fleet(FLEET, "test").unwrap();
        let text =
            "name: x\nevents:\n  - at: 1s\n    action: !set_slowdown { pod: nope-0, factor: 4 }\n";
        assert!(parse_scenario(text, "test", &fleet).is_err());
        let good = text.replace("nope-0", "fib25-1");
        let scenario = parse_scenario(&good, "test", &fleet).unwrap();
        assert_eq!(scenario.events.len(), 1);
    }

    #[test]
    fn a_rolling_restart_parses_and_names_the_replacements() {
        let fleet = parse_fleet(FLEET, "test").unwrap();
        let text = "name: roll\nevents:\n  - at: 30s\n    action: !rolling_restart { every: 2s }\n";
        let scenario = parse_scenario(text, "test", &fleet).unwrap();
        assert_eq!(
            scenario.rolling_restart(),
            Some((Duration::from_secs(30), Duration::from_secs(2)))
        );
        assert_eq!(scenario.load_factor_at(Duration::from_secs(40)), 1.0);
        let names: Vec<String> = fleet
            .with_replacements()
            .pods()
            .into_iter()
            .map(|pod| pod.name)
            .collect();
        assert_eq!(names, ["fib25-0", "fib25-1", "fib25-v2-0", "fib25-v2-1"]);
        assert!(parse_scenario(&text.replace("2s", "0s"), "test", &fleet).is_err());
        let clashing = parse_fleet(&FLEET.replace("fib25", "fib25-v2"), "test").unwrap();
        assert!(parse_scenario(text, "test", &clashing).is_err());
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scenarios/rolling-restart.yaml"
        ))
        .unwrap();
        assert!(parse_scenario(&shipped, "rolling-restart.yaml", &fleet)
            .unwrap()
            .rolling_restart()
            .is_some());
        // A shifted scenario written back as YAML reads the same, later.
        let later = scenario.shifted(Duration::from_secs(65));
        let text = serde_norway::to_string(&later).unwrap();
        let again = parse_scenario(&text, "shifted", &fleet).unwrap();
        assert_eq!(
            again.rolling_restart(),
            Some((Duration::from_secs(95), Duration::from_secs(2)))
        );
        let failing =
            "name: x\nevents:\n  - at: 1s\n    action: !set_failing { pod: fib25-0, ratio: 0.9 }\n";
        let failing = parse_scenario(failing, "test", &fleet).unwrap();
        let text = serde_norway::to_string(&failing.shifted(Duration::from_secs(1))).unwrap();
        assert_eq!(
            parse_scenario(&text, "shifted", &fleet).unwrap().events[0].at,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_failing_group_and_a_failing_event_parse_and_bad_ratios_are_refused() {
        let text = FLEET.replace(
            "sigma: 0.2 }\n",
            "sigma: 0.2 }\n    failing: { ratio: 0.9 }\n",
        );
        let fleet = parse_fleet(&text, "test").unwrap();
        let pods = fleet.pods();
        assert_eq!(pods[1].failing.ratio, 0.9);
        assert_eq!(
            pods[1].failing.after_ms,
            crate::fleet::DEFAULT_FAIL_AFTER_MS
        );
        let bad = text.replace("ratio: 0.9", "ratio: 1.5");
        let message = parse_fleet(&bad, "test").unwrap_err().to_string();
        assert!(message.contains("groups[0].failing"), "{message}");
        let event = "name: x\nevents:\n  - at: 1s\n    action: !set_failing { pod: fib25-0, ratio: 0.9, after_ms: 0.5 }\n";
        let scenario = parse_scenario(event, "test", &fleet).unwrap();
        assert_eq!(
            scenario.events[0].action,
            Action::SetFailing {
                pod: "fib25-0".to_owned(),
                ratio: 0.9,
                after_ms: 0.5
            }
        );
        assert!(parse_scenario(&event.replace("0.9", "-1"), "test", &fleet).is_err());
    }
}
