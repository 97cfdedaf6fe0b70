//! Integration tests: one binary, one file per surface.

mod conformance;
mod operations;
mod support;
mod webhook;
