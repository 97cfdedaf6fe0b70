//! JSON lines, one event per line, to standard output or appended to a file.
//!
//! A batch is acknowledged once it is flushed to the operating system (and,
//! for a file with `fsync = true`, synced to disk). A reader that stops
//! reading standard output therefore stops acknowledgements, and webhooks
//! answer 503, rather than the bridge buffering without bound.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;

use super::{PublishError, SinkError};
use crate::pipeline::Job;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Name in logs and metrics; default `stdout`.
    pub name: Option<String>,
}

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
}

impl FileConfig {
    pub fn validate(&self) -> Vec<String> {
        if self.path.as_os_str().is_empty() {
            vec!["path must not be empty".to_owned()]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug)]
pub struct StdoutSink {
    name: String,
    output: Mutex<Output>,
}

enum Output {
    Stdout(BufWriter<tokio::io::Stdout>),
    File {
        writer: BufWriter<tokio::fs::File>,
        fsync: bool,
    },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout(_) => f.write_str("Stdout"),
            Output::File { fsync, .. } => write!(f, "File {{ fsync: {fsync} }}"),
        }
    }
}

const BUFFER: usize = 256 * 1024;

impl StdoutSink {
    pub fn connect_stdout(config: &StdoutConfig) -> StdoutSink {
        StdoutSink {
            name: config.name.clone().unwrap_or_else(|| "stdout".to_owned()),
            output: Mutex::new(Output::Stdout(BufWriter::with_capacity(
                BUFFER,
                tokio::io::stdout(),
            ))),
        }
    }

    pub async fn connect_file(config: &FileConfig) -> Result<StdoutSink, SinkError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .await?;
        Ok(StdoutSink {
            name: config.name.clone().unwrap_or_else(|| "file".to_owned()),
            output: Mutex::new(Output::File {
                writer: BufWriter::with_capacity(BUFFER, file),
                fsync: config.fsync,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn publish(&self, jobs: &[Arc<Job>]) -> Result<(), PublishError> {
        let mut output = self.output.lock().await;
        let failed = |error: std::io::Error| PublishError {
            // Nothing is known to have reached the reader until a flush succeeds.
            acknowledged: 0,
            error: error.into(),
        };
        match &mut *output {
            Output::Stdout(writer) => {
                write_lines(writer, jobs).await.map_err(failed)?;
            }
            Output::File { writer, fsync } => {
                write_lines(writer, jobs).await.map_err(failed)?;
                if *fsync {
                    writer.get_ref().sync_data().await.map_err(failed)?;
                }
            }
        }
        Ok(())
    }

    pub async fn close(&self) -> Result<(), SinkError> {
        let mut output = self.output.lock().await;
        match &mut *output {
            Output::Stdout(writer) => writer.flush().await?,
            Output::File { writer, .. } => {
                writer.flush().await?;
                writer.get_ref().sync_all().await?;
            }
        }
        Ok(())
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    jobs: &[Arc<Job>],
) -> std::io::Result<()> {
    for job in jobs {
        writer.write_all(&job.json).await?;
        writer.write_all(b"\n").await?;
    }
    writer.flush().await
}
