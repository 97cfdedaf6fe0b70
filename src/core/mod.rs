//! The bridge's core: what a Fishjam notification is and what the bridge
//! makes of it. Pure and synchronous: no IO, no clock beyond what a caller
//! passes in, no telemetry, and nothing else of this crate. Every other
//! module depends down on this one; nothing here depends up.
//!
//! - `proto`: the prost types generated from Fishjam's protos; seen only by
//!   `decode`, `normalize` (and the simulator, which speaks the protocol).
//! - `decode`: bytes to ordered notifications, unwrapping one batch level.
//! - `mend`: invalid UTF-8 in a string field replaced by U+FFFD, as the
//!   official SDK decodes it, so that one bad string costs no notification.
//! - `event`: the published JSON event, the table of event types, and a
//!   `Message` (an event with its JSON, serialized once for every sink).
//! - `normalize`: a body to its events, and reconciled events back to a body.
//! - `cloudevents`: an event as a CloudEvent, in binary or structured mode.
//! - `route`: subject, topic and routing-key templates.
//! - `signature`: the webhook signature.

pub mod address;
pub mod cloudevents;
pub mod decode;
pub mod event;
pub mod mend;
pub mod normalize;
pub mod proto;
pub mod route;
pub mod settings;
pub mod signature;
