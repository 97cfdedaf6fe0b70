//! The `notifier` target: the property is in `../checks/notifier.rs`.
#![no_main]

#[path = "../checks/notifier.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
