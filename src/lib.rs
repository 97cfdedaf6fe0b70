//! fishjam-bridge: Fishjam server notifications in, JSON events out to the
//! message queues, acknowledged end to end.
//!
//! `start` builds the parts from a validated `Config`, binds the listeners,
//! spawns the tasks and returns a `Bridge`; `Bridge::wait` returns once the
//! shutdown token was cancelled and the pipeline drained (or the drain timed
//! out). See ARCHITECTURE.md for the codemap.

pub mod admin;
pub mod bridge;
pub mod config;
pub mod core;
pub mod election;
pub mod net;
pub mod pipeline;
pub mod simulator;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod tools;

pub use bridge::{start, Bridge};
