//! The `spool` target: the property is in `../checks/spool.rs`.
#![no_main]

#[path = "../checks/spool.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
