//! Plumbing every part that talks over a network uses: the listeners the
//! bridge serves, TLS both ways, and backoff with jitter.

pub mod backoff;
pub mod listener;
pub mod tls;
