//! `fishjam-bridge decode`: one webhook body or notifier frame, from a file
//! or stdin, as raw bytes, hex or base64, through the bridge's own
//! normalization, printed as the events a sink would receive (one JSON per
//! line); what the bridge would skip is named on stderr. For looking at a
//! body the bridge refused, or at what a given body becomes.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::core::decode::DecodeError;
use crate::core::event::Source;
use crate::core::normalize::{normalize_body, Origin};

/// How the input is written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InputFormat {
    Raw,
    Hex,
    Base64,
}

/// Why the input gave no events.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error(transparent)]
    Stdin(std::io::Error),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input is not valid hex")]
    Hex(#[source] hex::FromHexError),
    #[error("input is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// Not a `fishjam.ServerMessage`, with the label the bridge's metrics
    /// give it. The decode error is not a source: its text already holds
    /// its cause, which a chain would print twice.
    #[error("{0} ({reason})", reason = .0.reason())]
    Body(DecodeError),
}

/// Decodes `input` (`-` for stdin), written as `format`, and prints its
/// events, with `fishjam_id` as theirs.
pub fn decode(format: InputFormat, fishjam_id: &str, input: &Path) -> Result<(), Undecodable> {
    let body = unwrap(format, read(input)?)?;
    let origin = Origin {
        source: Source::Decode,
        received_at: SystemTime::now(),
        fishjam_id: Arc::from(fishjam_id),
        id_seed: rand::random(),
    };
    let normalized = normalize_body(&body, &origin).map_err(Undecodable::Body)?;
    let mut out = std::io::stdout().lock();
    // A closed stdout (`decode … | head`) ends the output, not the command.
    for event in &normalized.events {
        let _ = out.write_all(&event.to_json());
        let _ = out.write_all(b"\n");
    }
    for skipped in &normalized.skipped {
        eprintln!("skipped: {}", skipped.as_str());
    }
    Ok(())
}

fn read(input: &Path) -> Result<Vec<u8>, Undecodable> {
    if input.as_os_str() == "-" {
        let mut raw = Vec::new();
        std::io::stdin()
            .read_to_end(&mut raw)
            .map_err(Undecodable::Stdin)?;
        return Ok(raw);
    }
    std::fs::read(input).map_err(|source| Undecodable::Read {
        path: input.to_owned(),
        source,
    })
}

/// The body `raw` holds, written as `format`; hex and base64 may be
/// wrapped over lines.
fn unwrap(format: InputFormat, raw: Vec<u8>) -> Result<Vec<u8>, Undecodable> {
    use base64::Engine as _;
    let text = || -> String { String::from_utf8_lossy(&raw).split_whitespace().collect() };
    match format {
        InputFormat::Raw => Ok(raw),
        InputFormat::Hex => hex::decode(text()).map_err(Undecodable::Hex),
        InputFormat::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text())
            .map_err(Undecodable::Base64),
    }
}
