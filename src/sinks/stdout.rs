//! JSON lines, one event per line, to standard output or appended to a file.
//!
//! A batch is written whole and acknowledged once it is flushed to the operating system (and,
//! for a file with `fsync = true`, synced to disk). A reader that stops
//! reading standard output therefore stops acknowledgements, and webhooks
//! answer 503, rather than the bridge buffering without bound.

use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::file::FileConfig;
use super::{PublishError, SinkError};
use crate::core::event::Message;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Name in logs and metrics; default `stdout`.
    pub name: Option<String>,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: super::RouteConfig,
}

#[derive(Debug)]
pub struct StdoutSink {
    name: String,
    /// What errors name: "stdout", or "file <path>".
    target: String,
    output: Mutex<Output>,
}

#[derive(Debug)]
enum Output {
    Stdout(tokio::io::Stdout),
    File {
        file: tokio::fs::File,
        /// The length of the file after the last acknowledged batch: a failed
        /// write is cut back to it, so a retry never leaves a torn line.
        len: u64,
        fsync: bool,
    },
}

impl StdoutSink {
    pub fn connect_stdout(config: &StdoutConfig) -> StdoutSink {
        StdoutSink {
            name: config.name.clone().unwrap_or_else(|| "stdout".to_owned()),
            target: "stdout".to_owned(),
            output: Mutex::new(Output::Stdout(tokio::io::stdout())),
        }
    }

    pub async fn connect_file(config: &FileConfig) -> Result<StdoutSink, SinkError> {
        let path = config.path.display();
        let opened = async {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .await?;
            let len = file.metadata().await?.len();
            Ok((file, len))
        };
        let (file, len) = opened.await.map_err(|source| SinkError::Io {
            doing: format!("cannot open {path}"),
            source,
        })?;
        Ok(StdoutSink {
            name: config.name.clone().unwrap_or_else(|| "file".to_owned()),
            target: format!("file {path}"),
            output: Mutex::new(Output::File {
                file,
                len,
                fsync: config.fsync,
            }),
        })
    }

}

/// A device or pipe (`/dev/null`, a FIFO) cannot be synced, and has nothing
/// to sync: EINVAL from fsync means exactly that.
fn synced(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(error) if error.raw_os_error() == Some(22) => Ok(()),
        other => other,
    }
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

impl super::SinkKind for StdoutConfig {
    type Sink = StdoutSink;

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn route(&self) -> &super::RouteConfig {
        &self.route
    }

    async fn connect(&self, _health: super::SinkHealth) -> Result<StdoutSink, SinkError> {
        Ok(StdoutSink::connect_stdout(self))
    }
}

impl super::Publish for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn stores_prefixes(&self) -> bool {
        true
    }

    async fn publish(&self, jobs: &[&Message]) -> Result<(), PublishError> {
        let mut lines = Vec::with_capacity(jobs.iter().map(|j| j.json.len() + 1).sum());
        for job in jobs {
            lines.extend_from_slice(&job.json);
            lines.push(b'\n');
        }
        let mut output = self.output.lock().await;
        let result = match &mut *output {
            Output::Stdout(stdout) => write(stdout, &lines).await,
            Output::File { file, len, fsync } => {
                let mut result = write(file, &lines).await;
                if result.is_ok() && *fsync {
                    result = synced(file.sync_data().await);
                }
                match result {
                    Ok(()) => *len += lines.len() as u64,
                    Err(_) => {
                        // Best effort: if even this fails, the next batch
                        // fails too and is retried after it.
                        let _ = file.set_len(*len).await;
                    }
                }
                result
            }
        };
        result.map_err(|source| PublishError::new(
// Nothing counts as written until the whole batch is.
0, SinkError::Io {
                doing: format!("cannot write to {}", self.target),
                source,
            }))
    }

    async fn close(&self) -> Result<(), SinkError> {
        let mut output = self.output.lock().await;
        let closed = match &mut *output {
            Output::Stdout(stdout) => stdout.flush().await,
            Output::File { file, .. } => match file.flush().await {
                Ok(()) => synced(file.sync_all().await),
                Err(error) => Err(error),
            },
        };
        closed.map_err(|source| SinkError::Io {
            doing: format!("cannot flush {}", self.target),
            source,
        })
    }
}
