//! Where notifications come from. Each source reads raw bytes, hands them to
//! `normalize::normalize_body` and submits the events to the pipeline; only
//! sources watch the shutdown token.

pub mod notifier;
pub mod webhook;
