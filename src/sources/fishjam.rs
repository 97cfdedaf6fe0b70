//! Addressing Fishjam, checking credentials against its REST API, and
//! reading its rooms (`GET /room`) for the notifier's reconciliation.
//!
//! A fishjam id is either a cloud id (the base URL is then
//! `https://fishjam.io/api/v1/connect/<id>`) or the full URL of a
//! self-hosted Fishjam, as the official SDKs read it. Unlike the SDKs, only
//! the scheme is rewritten for the notifier (`http` to `ws`, `https` to
//! `wss`) and trailing slashes are trimmed before paths are appended.

use std::time::Duration;

use reqwest::StatusCode;

pub use crate::core::address::{base_url, notifier_url, AddressError};

/// What went wrong addressing or asking Fishjam: the id or URL, and the
/// error under it.
#[derive(Debug, thiserror::Error)]
pub enum FishjamError {
    #[error(transparent)]
    Id(#[from] AddressError),
    #[error("cannot build an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the extra CA certificates")]
    Roots(#[source] crate::net::tls::TlsError),
    #[error("GET {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: unexpected body")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A client for Fishjam's REST API: built once, since building one loads
/// the platform's root certificates.
pub fn rest_client(
    timeout: Duration,
    extra_roots: Option<&crate::net::tls::ExtraRoots>,
) -> Result<reqwest::Client, FishjamError> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(roots) = extra_roots {
        builder = roots.trusted_by(builder).map_err(FishjamError::Roots)?;
    }
    builder.build().map_err(FishjamError::Client)
}

/// `GET <base>/<path>` of `fishjam_id` with the management token, naming
/// the bridge as the SDKs name themselves: the URL asked, and the answer.
async fn get(
    client: &reqwest::Client,
    fishjam_id: &str,
    path: &str,
    token: &str,
) -> Result<(String, reqwest::Response), FishjamError> {
    let url = format!("{}/{path}", base_url(fishjam_id)?);
    let sent = client
        .get(&url)
        .bearer_auth(token)
        .header(
            "x-fishjam-api-client",
            concat!("fishjam-bridge/", env!("CARGO_PKG_VERSION")),
        )
        .send()
        .await;
    match sent {
        Ok(response) => Ok((url, response)),
        Err(source) => Err(FishjamError::Request { url, source }),
    }
}

/// Why the credentials could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Fishjam answered that the id or token is wrong: retrying cannot help.
    #[error("Fishjam refused the credentials ({status}): check fishjam.id ({id}) and fishjam.management_token (FISHJAM_MANAGEMENT_TOKEN); both come from the Fishjam dashboard")]
    Refused { status: StatusCode, id: String },
    /// Fishjam could not be asked, or answered something else: try again.
    #[error("cannot check the credentials")]
    Unreachable(#[from] FishjamError),
}

/// Asks `GET <base>/validate` whether `token` is valid for `fishjam_id`, as
/// the SDKs' `FishjamClient.create` does. 401, 403 and 404 mean refused.
pub async fn check_credentials(
    client: &reqwest::Client,
    fishjam_id: &str,
    token: &str,
) -> Result<(), CredentialError> {
    let (url, response) = get(client, fishjam_id, "validate", token).await?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => {
            Err(CredentialError::Refused {
                status,
                id: fishjam_id.to_owned(),
            })
        }
        status => Err(FishjamError::Status { url, status }.into()),
    }
}

/// A room as Fishjam's `GET /room` lists it: its peers with their type and
/// whether they are connected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FishjamRoom {
    pub id: String,
    #[serde(default)]
    pub peers: Vec<FishjamPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FishjamPeer {
    pub id: String,
    #[serde(rename = "type", default)]
    pub peer_type: Option<String>,
    /// `connected` or `disconnected`.
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(serde::Deserialize)]
struct RoomsListing {
    data: Vec<FishjamRoom>,
}

/// Reads every room and its peers from `GET <base>/room`.
pub async fn list_rooms(
    client: &reqwest::Client,
    fishjam_id: &str,
    token: &str,
) -> Result<Vec<FishjamRoom>, FishjamError> {
    let (url, response) = get(client, fishjam_id, "room", token).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(FishjamError::Status { url, status });
    }
    let body = response
        .bytes()
        .await
        .map_err(|source| FishjamError::Request {
            url: url.clone(),
            source,
        })?;
    let listing: RoomsListing =
        serde_json::from_slice(&body).map_err(|source| FishjamError::Body {
            url,
            source: source.into(),
        })?;
    Ok(listing.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_ids_and_urls() {
        assert_eq!(
            notifier_url("test-id").unwrap(),
            "wss://fishjam.io/api/v1/connect/test-id/socket/server/websocket"
        );
        assert_eq!(
            notifier_url("http://localhost:5002/").unwrap(),
            "ws://localhost:5002/socket/server/websocket"
        );
        // Only the scheme changes, never an "http" inside the host or path.
        assert_eq!(
            notifier_url("https://http-proxy.example/api/v1/connect/x").unwrap(),
            "wss://http-proxy.example/api/v1/connect/x/socket/server/websocket"
        );
        assert_eq!(base_url("https://host/api/").unwrap(), "https://host/api");
        assert!(base_url("").is_err());
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("a/b").is_err());
    }
}
