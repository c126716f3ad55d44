//! When appended bytes are forced to stable storage: what a stream's
//! acknowledgement promises. Spelt `always`, `interval:<ms>` or `none`
//! everywhere (configuration, the control plane's API, the wire, metadata
//! files), so it serialises as that string.
//!
//! | mode | survives a process crash | survives power loss |
//! |---|---|---|
//! | `always` | every acknowledged append | every acknowledged append |
//! | `interval:<ms>` | every acknowledged append | all but the last ≤ `ms` of appends |
//! | `none` | every acknowledged append | what the kernel happened to write back; sealed segments always |
//!
//! Appends are copied into a shared file mapping, so they are in the page
//! cache the moment the log's `append` returns and a killed process loses
//! nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Durability {
    /// Group commit: an append is acknowledged only after an fsync that
    /// covers it; concurrent appenders share one fsync.
    #[default]
    Always,
    /// A background flush every `ms` milliseconds.
    Interval { ms: u64 },
    /// No fsync on the append path.
    None,
}

/// A spelling that is not a durability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("durability '{0}': expected always, none or interval:<ms> with ms > 0")]
pub struct DurabilityError(pub String);

impl FromStr for Durability {
    type Err = DurabilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval { ms }),
                _ => Err(DurabilityError(s.to_owned())),
            },
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Interval { ms } => write!(f, "interval:{ms}"),
            Durability::None => f.write_str("none"),
        }
    }
}

impl TryFrom<String> for Durability {
    type Error = DurabilityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Durability> for String {
    fn from(d: Durability) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips_and_others_are_refused() {
        for s in ["always", "none", "interval:10", "interval:1"] {
            let d: Durability = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Durability>(&json).unwrap(), d);
        }
        for bad in [
            "",
            "Always",
            "interval:",
            "interval:0",
            "interval:-1",
            "interval:x",
            "sometimes",
        ] {
            let e = bad.parse::<Durability>().unwrap_err();
            assert!(
                e.to_string().contains("expected always, none or interval"),
                "{bad}: {e}"
            );
            assert!(serde_json::from_str::<Durability>(&format!("\"{bad}\"")).is_err());
        }
    }
}
