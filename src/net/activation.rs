//! Listening sockets handed over by a supervisor, as systemd's socket
//! activation hands them: `LISTEN_PID` (this process), `LISTEN_FDS` (how
//! many, from descriptor 3) and `LISTEN_FDNAMES` (their names: `webhook`,
//! `admin`). The supervisor keeps them open across a restart, so that
//! connections wait in the kernel's backlog instead of being refused:
//! Fishjam does not post a refused webhook again.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor a supervisor hands over.
const FIRST: RawFd = 3;

/// The sockets this process was handed, each taken once.
#[derive(Debug, Default)]
pub struct Inherited {
    /// By name, when the supervisor named them.
    named: HashMap<String, RawFd>,
    /// In order, when it did not.
    unnamed: Vec<Option<RawFd>>,
}

impl Inherited {
    /// What the environment hands to this process (nothing when
    /// `LISTEN_PID` names another one, a parent's left behind).
    pub fn from_env() -> Inherited {
        let var = |name| std::env::var(name).ok();
        Self::parse(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )
    }

    fn parse(pid: Option<&str>, fds: Option<&str>, names: Option<&str>, me: u32) -> Inherited {
        if pid.and_then(|pid| pid.parse::<u32>().ok()) != Some(me) {
            return Inherited::default();
        }
        let count = fds
            .and_then(|n| n.parse::<RawFd>().ok())
            .unwrap_or(0)
            .max(0);
        let fds = FIRST..FIRST.saturating_add(count);
        let named: HashMap<String, RawFd> = names
            .unwrap_or_default()
            .split(':')
            .zip(fds.clone())
            .filter(|(name, _)| !name.is_empty() && *name != "unknown")
            .map(|(name, fd)| (name.to_owned(), fd))
            .collect();
        let unnamed = if named.is_empty() {
            fds.map(Some).collect()
        } else {
            Vec::new()
        };
        Inherited { named, unnamed }
    }

    /// The socket named `name`, or, when the supervisor named none, the
    /// `index`-th (webhook first, then admin).
    pub fn take(&mut self, name: &str, index: usize) -> Option<std::net::TcpListener> {
        let fd = match self.named.remove(name) {
            Some(fd) => fd,
            None => self.unnamed.get_mut(index)?.take()?,
        };
        // SAFETY: the supervisor handed this descriptor to this process
        // (LISTEN_PID) as a listening socket, and it is taken only once.
        Some(unsafe { std::net::TcpListener::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_meant_for_this_process_is_taken() {
        let parse = Inherited::parse;
        assert!(parse(Some("7"), Some("2"), None, 8).unnamed.is_empty());
        assert!(parse(None, Some("2"), None, 8).unnamed.is_empty());
        let unnamed = parse(Some("8"), Some("2"), None, 8);
        assert_eq!(unnamed.unnamed, [Some(3), Some(4)]);
        let named = parse(Some("8"), Some("2"), Some("admin:webhook"), 8);
        assert_eq!(named.named["webhook"], 4);
        assert_eq!(named.named["admin"], 3);
        assert!(named.unnamed.is_empty());
    }
}
