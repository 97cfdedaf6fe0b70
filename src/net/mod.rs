//! Plumbing every part that talks over a network uses: the listeners the
//! bridge serves, TLS both ways, backoff with jitter, and the signals that
//! stop a server.

pub mod activation;
pub mod backoff;
pub mod listener;
pub mod signal;
pub mod tls;
