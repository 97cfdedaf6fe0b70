//! The fuzz targets' properties, replayed over the committed corpora
//! (`fuzz/replay/<target>.corpus`: what `scripts/fuzz` kept, minimized, and
//! every input that once failed, packed by `scripts/fuzz-corpus` as
//! [length, u32 little-endian][bytes]) as ordinary tests, so that the suite
//! checks what the fuzzers found without building them (FUZZING.md).

use std::path::Path;

#[path = "../../fuzz/checks/config.rs"]
mod config;
#[path = "../../fuzz/checks/decode.rs"]
mod decode;
#[path = "../../fuzz/checks/notifier.rs"]
mod notifier;
#[path = "../../fuzz/checks/spool.rs"]
mod spool;
#[path = "../../fuzz/checks/webhook.rs"]
mod webhook;

/// Runs `check` on every input of the target's corpus; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/replay")
        .join(format!("{target}.corpus"));
    let packed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rest = &packed[..];
    let mut count = 0;
    while let Some((length, tail)) = rest.split_first_chunk::<4>() {
        let length = u32::from_le_bytes(*length) as usize;
        assert!(length <= tail.len(), "{} is cut short", path.display());
        let (input, tail) = tail.split_at(length);
        let outcome = std::panic::catch_unwind(|| check(input));
        assert!(
            outcome.is_ok(),
            "input {count} of {} fails its property",
            path.display()
        );
        rest = tail;
        count += 1;
    }
    assert!(
        rest.is_empty() && count > 0,
        "{} holds no inputs",
        path.display()
    );
    count
}

#[test]
fn the_decode_corpus_holds() {
    replay("decode", decode::check);
}

#[test]
fn the_webhook_corpus_holds() {
    replay("webhook", webhook::check);
}

#[test]
fn the_notifier_corpus_holds() {
    replay("notifier", notifier::check);
}

#[test]
fn the_config_corpus_holds() {
    replay("config", config::check);
}

#[test]
fn the_spool_corpus_holds() {
    replay("spool", spool::check);
}
