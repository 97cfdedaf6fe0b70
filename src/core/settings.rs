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

    /// The secret a file holds: its text without the trailing newline a
    /// mounted secret often ends with, which is never part of it.
    pub fn from_file_text(text: &str) -> Secret {
        Secret::new(text.trim_end_matches(['\r', '\n']))
    }

    /// The secrets it holds, one per line: during a rotation, the current
    /// one and the next.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.0
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
    }
}

/// Reads a secret written as one string or as a list (a rotation: the
/// current one and the next), kept as one secret per line.
pub fn one_or_more_secrets<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(Some(Secret(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(secret) => secret,
        OneOrMore::More(secrets) => secrets.join("\n"),
    })))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `url` with the user information (user and password, or a token written
/// in its place) replaced by `***`, for printing: each URL of a
/// comma-separated list on its own. Text that is no URL comes back as it is.
pub fn masked_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            match authority.rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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

#[cfg(test)]
mod tests {
    use super::masked_url;

    #[test]
    fn urls_are_printed_without_their_user_information() {
        for (url, printed) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://bridge:pw@nats-1:4222", "nats://***@nats-1:4222"),
            ("nats://a-token@nats-1", "nats://***@nats-1"),
            (
                "nats://u:p@a:4222,nats://b:4222",
                "nats://***@a:4222,nats://b:4222",
            ),
            (
                "amqp://guest:p@ss@rabbit:5672/%2f",
                "amqp://***@rabbit:5672/%2f",
            ),
            (
                "http://host/path@not-userinfo",
                "http://host/path@not-userinfo",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(masked_url(url), printed, "{url}");
        }
    }
}
