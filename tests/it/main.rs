//! Integration tests: one binary, one file per surface.

mod conformance;
mod nats;
mod operations;
mod support;
mod webhook;
