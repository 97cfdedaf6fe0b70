//! `fishjam-bridge tap`: a client of a running bridge's `/tap` (served with
//! `admin.tap = true`) that prints the events it accepts, live, one JSON per
//! line on stdout, and says on stderr when this client read too slowly and
//! the bridge skipped events for it. The server side is `admin::tap`.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

pub use crate::admin::tap::Filter;

/// Streams the events of the bridge at `admin` that pass `filter` to
/// stdout until the bridge ends the stream (or the user does, with
/// Ctrl-C), trusting `ca_file` beside the platform's roots.
pub fn tap(
    admin: &str,
    filter: &Filter,
    ca_file: Option<&Path>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let client = super::admin_client(ca_file, token_file, None)?;
    super::runtime().block_on(stream(&client, admin, filter))
}

async fn stream(client: &reqwest::Client, admin: &str, filter: &Filter) -> anyhow::Result<()> {
    // A field that is not set is left out: sent empty, it would ask for
    // the empty name.
    let query: Vec<(&str, &str)> = [
        ("room", &filter.room),
        ("type", &filter.event_type),
        ("source", &filter.source),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value.as_deref()?)))
    .collect();
    let url = format!("{}/tap", admin.trim_end_matches('/'));
    let mut response = client
        .get(&url)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    match response.status() {
        reqwest::StatusCode::OK => {}
        reqwest::StatusCode::NOT_FOUND => {
            anyhow::bail!("{url}: not served; the bridge serves /tap only with admin.tap = true")
        }
        status => {
            let why = response.text().await.unwrap_or_default();
            anyhow::bail!("{url}: {status}: {}", why.trim());
        }
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = response.chunk().await.context("the tap stream broke")? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(&mut stdout, &line[..line.len() - 1])?;
        }
    }
    Ok(())
}

/// Prints one line of the stream: an event on stdout, the bridge's notice
/// of skipped events on stderr, nothing for its keep-alive (an empty line).
fn print_line(stdout: &mut impl Write, line: &[u8]) -> anyhow::Result<()> {
    if line.is_empty() {
        return Ok(());
    }
    if line.starts_with(b"{\"tap\":") {
        let notice: serde_json::Value = serde_json::from_slice(line)?;
        eprintln!(
            "fishjam-bridge: {} events skipped: this tap read more slowly than they came",
            notice["tap"]["dropped"]
        );
        return Ok(());
    }
    stdout.write_all(line)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}
