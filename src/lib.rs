//! fishjam-bridge: Fishjam server notifications in, JSON events out to the
//! message queues, acknowledged end to end.
//!
//! `start` builds the parts from a validated `Config`, binds the listeners,
//! spawns the tasks and returns a `Bridge`; `Bridge::wait` returns once the
//! shutdown token was cancelled and the pipeline drained (or the drain timed
//! out). See ARCHITECTURE.md for the codemap.

mod admin;
pub mod bridge;
pub mod config;
pub mod core;
mod election;
mod net;
mod pipeline;
pub mod simulator;
mod sinks;
mod sources;
pub mod telemetry;
pub mod tools;

pub use bridge::{start, Bridge};

/// The delivery core and the sinks, for the integration tests, the model of
/// the delivery core, the benchmarks, the fuzz targets and the examples:
/// not an API, and not kept stable.
#[doc(hidden)]
pub mod testing {
    pub mod admin {
        pub use crate::admin::Readiness;
    }
    pub mod pipeline {
        pub use crate::pipeline::{admission, dead_letter, dedup, fanout, lane, spool};
    }
    pub mod sinks {
        pub use crate::sinks::{
            each_header, kafka, nats, Publish, PublishError, Settlement, SinkError, SinkHealth,
            SinkKind,
        };
    }
    pub mod sources {
        pub use crate::sources::{notifier, webhook};
    }
}
