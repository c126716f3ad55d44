//! What kind of log a stream is. One enum for the broker's metadata, the
//! control plane's API and the wire (where it travels as its code).

use serde::{Deserialize, Serialize};

/// A stream's kind: every record kept until retention, only the latest per
/// key, or a cache (the latest per key, with TTLs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    #[default]
    Stream,
    Compacted,
    Cache,
}

/// A value that is not a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("stream kind {0}: expected 0, 1 or 2")]
    UnknownKind(u8),
}

impl StreamKind {
    /// Its code on the wire (`docs/format/wire.md`, StreamConfig).
    pub fn code(self) -> u8 {
        match self {
            StreamKind::Stream => 0,
            StreamKind::Compacted => 1,
            StreamKind::Cache => 2,
        }
    }

    pub fn from_code(k: u8) -> Result<StreamKind, SpecError> {
        match k {
            0 => Ok(StreamKind::Stream),
            1 => Ok(StreamKind::Compacted),
            2 => Ok(StreamKind::Cache),
            _ => Err(SpecError::UnknownKind(k)),
        }
    }

    /// Whether its shards are keyed (indexed by key, compacted).
    pub fn keyed(self) -> bool {
        !matches!(self, StreamKind::Stream)
    }
}

/// Serde as the code (`#[serde(with = "felix_model::spec::as_code")]`),
/// for the broker's metadata log, whose entries have stored the kind as
/// its wire code since before the kind had a name.
pub mod as_code {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::StreamKind;

    pub fn serialize<S: Serializer>(k: &StreamKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(k.code())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StreamKind, D::Error> {
        StreamKind::from_code(u8::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_codes_and_names() {
        for k in [StreamKind::Stream, StreamKind::Compacted, StreamKind::Cache] {
            assert_eq!(StreamKind::from_code(k.code()), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<StreamKind>(&json).unwrap(), k);
        }
        assert_eq!(
            serde_json::to_string(&StreamKind::Compacted).unwrap(),
            "\"compacted\""
        );
        assert_eq!(StreamKind::from_code(3), Err(SpecError::UnknownKind(3)));
        assert!(!StreamKind::Stream.keyed() && StreamKind::Cache.keyed());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Coded {
        #[serde(with = "as_code")]
        kind: StreamKind,
    }

    #[test]
    fn a_kind_stored_as_its_code_reads_back_and_an_unknown_code_is_refused() {
        let json = serde_json::to_string(&Coded {
            kind: StreamKind::Cache,
        })
        .unwrap();
        assert_eq!(json, r#"{"kind":2}"#);
        assert_eq!(
            serde_json::from_str::<Coded>(&json).unwrap().kind,
            StreamKind::Cache
        );
        let e = serde_json::from_str::<Coded>(r#"{"kind":7}"#).unwrap_err();
        assert!(e.to_string().contains("stream kind 7"), "{e}");
    }
}
