//! The lease in a NATS JetStream key-value bucket.
//!
//! One key per Fishjam (`notifier.<fishjam id>`), in a bucket whose
//! `max_age` is the lease's time to live and which keeps one value per key:
//! a value not renewed within the time to live is removed by the server.
//!
//! - Take: `create`, which the server accepts only while the key has no
//!   value (JetStream's expected last subject sequence 0).
//! - Renew: `update` at the revision this replica wrote last: refused when
//!   anything else was written since, or when the value ran out.
//! - Release: purge the key's subject, leaving no delete marker, and say so
//!   on a core NATS subject the followers listen on, so one takes over at
//!   once rather than on its next beat. After a
//!   marker, `create` would fall back to an update at the marker's
//!   revision, which nats-server before 2.9.21 does not check under
//!   concurrency in a cluster (nats-server#4320); with no value left, every
//!   take goes through the checked path.
//!
//! The value is this replica's identity and a number drawn at start, so a
//! take whose answer was lost (the value is there, but is it ours?) is told
//! from another replica with the same identity.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self};
use bytes::Bytes;

use super::{holder_value, identity_in, Attempt, LeaseError, LeaseStore};

/// Where the lease lives and for how long.
pub struct NatsLease {
    client: async_nats::Client,
    /// Where a holder says it released the lease (core NATS, no storage).
    announce: String,
    releases: async_nats::Subscriber,
    context: jetstream::Context,
    store: kv::Store,
    key: String,
    value: Bytes,
    ttl: Duration,
    /// The revision this replica wrote last, while it holds the lease.
    revision: Option<u64>,
}

/// The key for `fishjam_id`: a key allows letters, digits and `-_=./`, so
/// anything else (the `:` of a URL) becomes `_`.
pub fn key_for(fishjam_id: &str) -> String {
    let id: String = fishjam_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("notifier.{id}")
}

impl NatsLease {
    /// Opens (or creates) the bucket with `max_age` = `ttl`, on `client`.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
        key: String,
        identity: &str,
        ttl: Duration,
    ) -> Result<NatsLease, LeaseError> {
        let context = jetstream::new(client.clone());
        let failed = |e: &(dyn std::error::Error + 'static)| {
            LeaseError::Store(format!("bucket {bucket}: {}", crate::telemetry::Chain(e)))
        };
        // The bucket's stream as async-nats's own `create_key_value` makes
        // it, written here because that call first asks for the account's
        // limits in a form nats-server 2.9 does not answer.
        context
            .create_or_update_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("fishjam-bridge: which replica holds the notifier".to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                // The server refuses a duplicate window longer than max_age.
                duplicate_window: ttl.min(Duration::from_secs(120)),
                storage: StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let store = context
            .get_key_value(bucket)
            .await
            .map_err(|e| failed(&e))?;
        let announce = format!("fishjam_bridge.lease.{bucket}.{key}.released");
        let releases = client
            .subscribe(announce.clone())
            .await
            .map_err(|e| failed(&e))?;
        Ok(NatsLease {
            client,
            announce,
            releases,
            context,
            store,
            key,
            value: Bytes::from(holder_value(identity)),
            ttl,
            revision: None,
        })
    }

    /// Renews at the revision in `entry`, which is this replica's own value
    /// whose take was not answered: the renewal is sent now, so the lease's
    /// validity is counted from now.
    async fn adopt(&mut self, revision: u64) -> Result<Attempt, LeaseError> {
        self.revision = Some(revision);
        self.renew().await.map(|()| Attempt::Held)
    }
}

/// Connects to the servers of the NATS sink `sink` and opens the lease for
/// `fishjam_id` as `identity`.
pub async fn connect(
    sink: &crate::sinks::nats::NatsConfig,
    election: &crate::config::ElectionConfig,
    fishjam_id: &str,
    identity: &str,
) -> Result<NatsLease, LeaseError> {
    let options = crate::sinks::nats::connect_options(sink, "election")
        .await
        .map_err(|e| LeaseError::store(&e))?
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected | async_nats::Event::Closed => {
                    tracing::warn!(%event, "election: NATS connection lost")
                }
                other => tracing::info!(event = %other, "election: NATS event"),
            }
        });
    let client = crate::sinks::nats::connect_with(sink, options)
        .await
        .map_err(|e| LeaseError::store(&e))?;
    NatsLease::open(
        client,
        &election.nats.bucket,
        election.nats.replicas,
        key_for(fishjam_id),
        identity,
        election.ttl,
    )
    .await
}

/// The identity part of a lease value.
fn holder(value: &[u8]) -> String {
    identity_in(&String::from_utf8_lossy(value)).to_owned()
}

impl LeaseStore for NatsLease {
    async fn acquire(&mut self) -> Result<Attempt, LeaseError> {
        let refused = match self.store.create(&self.key, self.value.clone()).await {
            Ok(revision) => {
                self.revision = Some(revision);
                return Ok(Attempt::Held);
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => error,
            Err(error) => return Err(LeaseError::store(&error)),
        };
        let entry = self
            .store
            .entry(&self.key)
            .await
            .map_err(|e| LeaseError::store(&e))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put && entry.value == self.value => {
                self.adopt(entry.revision).await
            }
            Some(entry) if entry.operation == Operation::Put => {
                // The server removes the value `max_age` after it was
                // written; both clocks are the servers' and this host's.
                let written = std::time::SystemTime::from(entry.created);
                let age = written.elapsed().unwrap_or_default();
                Ok(Attempt::Taken {
                    holder: holder(&entry.value),
                    free_in: Some(self.ttl.saturating_sub(age)),
                })
            }
            // Gone between the two questions, or a marker left by another
            // tool: ask again on the next beat.
            _ => Err(LeaseError::Store(format!(
                "the lease changed while it was read ({refused})"
            ))),
        }
    }

    async fn renew(&mut self) -> Result<(), LeaseError> {
        let Some(revision) = self.revision else {
            return Err(LeaseError::Lost("nobody (not taken)".to_owned()));
        };
        match self
            .store
            .update(&self.key, self.value.clone(), revision)
            .await
        {
            Ok(revision) => {
                self.revision = Some(revision);
                Ok(())
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                self.revision = None;
                let holder = match self.store.entry(&self.key).await {
                    Ok(Some(entry)) if entry.operation == Operation::Put => holder(&entry.value),
                    _ => "nobody (it ran out)".to_owned(),
                };
                Err(LeaseError::Lost(holder))
            }
            Err(error) => Err(LeaseError::store(&error)),
        }
    }

    async fn release(&mut self) -> Result<(), LeaseError> {
        if self.revision.take().is_none() {
            return Ok(());
        }
        let subject = format!("{}{}", self.store.prefix, self.key);
        let stream = self
            .context
            .get_stream(&self.store.stream_name)
            .await
            .map_err(|e| LeaseError::store(&e))?;
        stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| LeaseError::store(&e))?;
        // The followers try at once; one that misses this tries on its beat.
        let announced = self
            .client
            .publish(self.announce.clone(), Bytes::new())
            .await;
        let flushed = self.client.flush().await;
        if let Some(error) = announced.err() {
            tracing::debug!(error = %error, "release not announced");
        }
        if let Some(error) = flushed.err() {
            tracing::debug!(error = %error, "release not announced");
        }
        Ok(())
    }

    async fn released(&mut self) {
        use futures_util::StreamExt;
        if self.releases.next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_what_the_bucket_accepts() {
        assert_eq!(key_for("abc123"), "notifier.abc123");
        assert_eq!(
            key_for("http://localhost:5002"),
            "notifier.http___localhost_5002"
        );
    }

    #[test]
    fn the_holder_is_the_identity_without_its_number() {
        assert_eq!(holder(b"pod-0 00ff00ff00ff00ff"), "pod-0");
        assert_eq!(holder(b"host with space 1"), "host with space");
    }
}
