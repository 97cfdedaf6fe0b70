//! The `webhook` target: the property is in `../checks/webhook.rs`.
#![no_main]

#[path = "../checks/webhook.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
