//! The protobuf types generated from `proto/` by `build.rs`.
//!
//! Only `decode`, `normalize` and the simulator (which encodes what Fishjam
//! would send) use these types; everything downstream sees `event::Event`.

#![allow(clippy::all, missing_docs)]

pub mod notifications {
    include!(concat!(env!("OUT_DIR"), "/fishjam.notifications.rs"));
}

include!(concat!(env!("OUT_DIR"), "/fishjam.rs"));

pub use server_message::Content;
