//! Durations in the config, written the human way (`10s`, `500ms`, `5m`, `1m30s`).

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

use super::{problem, Problem};

/// A duration parsed from text such as `10s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a duration such as 10s, 500ms or 5m")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                humantime::parse_duration(text.trim())
                    .map(ConfigDuration)
                    .map_err(|error| {
                        E::custom(format!(
                            "expected a duration such as 10s, 500ms or 5m, got {text:?} ({error})"
                        ))
                    })
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Names `field` when `value` is zero (a tick, timeout or window must pass some time).
pub(super) fn check_positive(field: &str, value: Duration, problems: &mut Vec<Problem>) {
    if value.is_zero() {
        problems.push(problem(field, "expected a duration above zero"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        let parsed: ConfigDuration = serde_norway::from_str("1m30s").expect("valid");
        assert_eq!(parsed.0, Duration::from_secs(90));
        let error = serde_norway::from_str::<ConfigDuration>("ten seconds").expect_err("invalid");
        assert!(error.to_string().contains("expected a duration"), "{error}");
    }
}
