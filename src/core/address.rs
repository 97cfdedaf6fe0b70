//! Where Fishjam is: a cloud id or the URL of a self-hosted Fishjam, to
//! its REST base and its notifier's WebSocket URL.

/// A Fishjam id that is neither a cloud id nor an http(s) URL.
#[derive(Debug, thiserror::Error)]
#[error("{id:?} is {problem}")]
pub struct AddressError {
    pub id: String,
    pub problem: &'static str,
}

/// The REST base URL for a fishjam id.
pub fn base_url(fishjam_id: &str) -> Result<String, AddressError> {
    let id = fishjam_id.trim();
    let refused = |problem| AddressError {
        id: id.to_owned(),
        problem,
    };
    if id.is_empty() {
        return Err(refused("empty: give the Fishjam cloud id or URL"));
    }
    if let Some((scheme, rest)) = id.split_once("://") {
        if !matches!(scheme, "http" | "https") || rest.is_empty() {
            return Err(refused("not an http(s) URL nor a Fishjam cloud id"));
        }
        return Ok(id.trim_end_matches('/').to_owned());
    }
    if id.contains(['/', ' ', '?', '#']) {
        return Err(refused("not a Fishjam cloud id nor an http(s) URL"));
    }
    Ok(format!("https://fishjam.io/api/v1/connect/{id}"))
}

/// The notifier WebSocket URL for a fishjam id.
pub fn notifier_url(fishjam_id: &str) -> Result<String, AddressError> {
    let base = base_url(fishjam_id)?;
    let websocket = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        unreachable!("base_url returns http(s) URLs only")
    };
    Ok(format!("{websocket}/socket/server/websocket"))
}
