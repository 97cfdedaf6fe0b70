//! Integration tests: one binary, one file per surface.

mod amqp;
mod conformance;
mod nats;
mod operations;
mod support;
mod webhook;
