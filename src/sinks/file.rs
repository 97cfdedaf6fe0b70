//! JSON lines appended to a file: the writer of `stdout`, on a file that
//! is cut back to its last acknowledged batch when a write fails, and
//! synced before acknowledging with `fsync = true`.

use std::path::PathBuf;

use serde::Deserialize;

use super::stdout::StdoutSink;
use super::SinkError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Name in logs and metrics; default `file`.
    pub name: Option<String>,
    /// File to append to; created if missing.
    pub path: PathBuf,
    /// Sync the file to disk before acknowledging a batch.
    #[serde(default)]
    pub fsync: bool,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: super::RouteConfig,
}

impl super::SinkKind for FileConfig {
    type Sink = StdoutSink;

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn route(&self) -> &super::RouteConfig {
        &self.route
    }

    fn validate(&self) -> Vec<String> {
        if self.path.as_os_str().is_empty() {
            vec!["path must not be empty".to_owned()]
        } else {
            Vec::new()
        }
    }

    fn describe(&self) -> String {
        format!("path {}, fsync {}", self.path.display(), self.fsync)
    }

    async fn connect(&self, _health: super::SinkHealth) -> Result<StdoutSink, SinkError> {
        StdoutSink::connect_file(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::Publish;

    #[tokio::test]
    async fn a_device_closes_cleanly_even_with_fsync() {
        let sink = StdoutSink::connect_file(&FileConfig {
            name: None,
            path: PathBuf::from("/dev/null"),
            fsync: true,
            route: Default::default(),
        })
        .await
        .unwrap();
        sink.close().await.unwrap();
    }
}
