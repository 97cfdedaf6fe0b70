//! The value types a configuration is made of and the parts it configures
//! read: secrets and durations. They live here, below both `config` and the
//! sinks and sources, so that no part depends on `config` to read its own
//! section.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A secret string: never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads a duration written like "4s" or "250ms".
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write it like \"4s\" or \"250ms\""
        ))
    })
}
