//! Where notifications come from. Each source reads raw bytes, hands them to
//! `normalize::normalize_body` and submits the events to the pipeline; only
//! sources watch the shutdown token.

pub mod fishjam;
pub mod notifier;
pub mod reconcile;
pub mod webhook;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// An error a task met that must end the bridge (refused credentials): the
/// task records it and cancels the shutdown token; `Bridge::wait` returns it.
#[derive(Debug, Clone, Default)]
pub struct Fatal(Arc<std::sync::Mutex<Option<String>>>);

impl Fatal {
    pub fn set(&self, error: String, shutdown: &CancellationToken) {
        *self.0.lock().expect("never poisoned") = Some(error);
        shutdown.cancel();
    }

    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().expect("never poisoned").take()
    }
}
