//! The operator's commands beside `run`, each a function `main` calls with
//! its parsed arguments: the terminal view (`top`), the live events (`tap`),
//! checking a configuration (`check`, which reaches the targets with
//! `probe`), decoding a body (`decode`) and the dead-letter file
//! (`dead_letters`, which sends them again with `redrive`). Each prints its
//! report and returns why it failed, so that `main` only chooses the exit
//! status.

pub mod check;
pub mod dead_letters;
pub mod decode;
pub mod probe;
pub mod redrive;
pub mod spool;
pub mod tap;
pub mod top;

use std::path::Path;
use std::time::Duration;

use crate::net::tls::{ExtraRoots, TlsError};

/// Why a client for the admin listener cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Roots(#[from] TlsError),
    #[error("cannot read the admin token from {path}")]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token in {0} is not a valid header value")]
    TokenValue(std::path::PathBuf),
    #[error(transparent)]
    Build(#[from] reqwest::Error),
}

/// A client for a bridge's admin listener (`tap`, `top`), trusting
/// `ca_file` beside the platform's roots, sending the bearer token of
/// `token_file` (`admin.token_file`) when given, each request within
/// `timeout` when given.
fn admin_client(
    ca_file: Option<&Path>,
    token_file: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path).map_err(|source| ClientError::Token {
            path: path.to_owned(),
            source,
        })?;
        let value = format!("Bearer {}", token.trim_end_matches(['\r', '\n']));
        let mut value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| ClientError::TokenValue(path.to_owned()))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(path) = ca_file {
        builder = ExtraRoots::load(path)?.trusted_by(builder)?;
    }
    Ok(builder.build()?)
}

/// The runtime of a command that talks to the network: the bridge's own
/// kind (several threads, IO and timers), which `top` needs for
/// `block_in_place`.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("the tokio runtime starts")
}
