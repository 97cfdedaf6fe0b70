//! Admission and acknowledgement: the path from a source to every sink.
//!
//! A source submits the events of one body together. The pipeline admits them
//! only if the bound on events in flight allows all of them (a body is never
//! half admitted), serializes each event once, and hands it to one lane of
//! every sink: the lane is chosen by the event's key, so the events of a room
//! stay in order while other rooms publish in parallel. The submitter gets a
//! `Receipt` that completes once every sink acknowledged every event of the
//! body. An event's slot in the bound is freed when the last sink is done
//! with it, so memory stays bounded whatever the input rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::activity::{Activity, KnownRooms};
use crate::dedup::{self, Deduplicator};
use crate::event::{Event, Source};
use crate::telemetry;

/// One event on its way to the sinks.
#[derive(Debug)]
pub struct Job {
    pub event: Event,
    /// The event as JSON, serialized once for every sink.
    pub json: Bytes,
    receipt: Arc<ReceiptState>,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    /// Called by a sink once the event is safe with it.
    pub fn acknowledge(&self) {
        self.receipt.acknowledge_one();
    }
}

#[derive(Debug)]
struct ReceiptState {
    remaining: AtomicUsize,
    done: Notify,
    source: Source,
    received: Instant,
}

impl ReceiptState {
    fn acknowledge_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            telemetry::acknowledged(self.source, self.received.elapsed());
            // notify_one keeps a permit if nobody waits yet, so no wake-up is lost.
            self.done.notify_one();
        }
    }
}

/// Completes when every sink acknowledged every event of one submission.
#[derive(Debug)]
pub struct Receipt(Arc<ReceiptState>);

impl Receipt {
    pub async fn acknowledged(&self) {
        while self.0.remaining.load(Ordering::Acquire) != 0 {
            self.0.done.notified().await;
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the pipeline holds its maximum of events in flight")]
    Full,
    #[error("more events than the pipeline can ever hold at once")]
    TooLarge,
    #[error("the pipeline is shutting down")]
    Closed,
}

/// How full the pipeline is; shared with the sink lanes, which report it.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl InFlight {
    pub fn current(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn report(&self) {
        telemetry::pipeline_in_flight(self.current());
    }
}

/// The receiving end of one lane of one sink.
pub type LaneReceiver = mpsc::UnboundedReceiver<Arc<Job>>;

/// The sending side, cloned into every source. Dropping every clone closes
/// the lanes, which is how the sinks learn that the sources have stopped.
#[derive(Debug, Clone)]
pub struct Pipeline {
    in_flight: InFlight,
    /// With both sources on: checked and updated under its lock together
    /// with the dispatch to the lanes, so that the first delivery of each
    /// notification reaches the lanes in the order it was admitted.
    dedup: Option<Arc<std::sync::Mutex<Deduplicator>>>,
    /// Sees each event once, after deduplication.
    activity: Arc<std::sync::Mutex<Activity>>,
    /// `[sink][lane]`. The lanes themselves are unbounded: the semaphore bounds them.
    lanes: Arc<Vec<SinkLanes>>,
}

/// A sink's name and the sending ends of its lanes.
type SinkLanes = (Arc<str>, Vec<mpsc::UnboundedSender<Arc<Job>>>);

impl Pipeline {
    /// A pipeline for the sinks given as (name, lane count). Returns the
    /// receivers as `[sink][lane]`.
    pub fn new(
        sinks: &[(String, usize)],
        capacity: usize,
        dedup: Option<Deduplicator>,
    ) -> (Pipeline, Vec<Vec<LaneReceiver>>, InFlight) {
        let in_flight = InFlight {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        };
        telemetry::pipeline_capacity(capacity);
        telemetry::rooms_known(0);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for (name, lanes) in sinks {
            let (tx, rx): (Vec<_>, Vec<_>) = (0..(*lanes).max(1))
                .map(|_| mpsc::unbounded_channel())
                .unzip();
            senders.push((Arc::from(name.as_str()), tx));
            receivers.push(rx);
        }
        let pipeline = Pipeline {
            in_flight: in_flight.clone(),
            dedup: dedup.map(|d| Arc::new(std::sync::Mutex::new(d))),
            activity: Arc::default(),
            lanes: Arc::new(senders),
        };
        (pipeline, receivers, in_flight)
    }

    /// The rooms and peers known from the events admitted so far.
    pub fn known_rooms(&self) -> KnownRooms {
        self.activity
            .lock()
            .expect("room activity never panics")
            .snapshot()
    }

    /// Adds rooms known from elsewhere to what is known, without events.
    pub fn learn_rooms(&self, rooms: KnownRooms) {
        self.activity
            .lock()
            .expect("room activity never panics")
            .learn(rooms);
    }

    /// Admits all of `events` or none: `Full` when the bound would be passed.
    pub fn try_submit(
        &self,
        events: Vec<Event>,
        source: Source,
        received: Instant,
    ) -> Result<Receipt, SubmitError> {
        let count = u32::try_from(events.len()).map_err(|_| SubmitError::TooLarge)?;
        if events.len() > self.in_flight.capacity {
            return Err(SubmitError::TooLarge);
        }
        let permit = match self.in_flight.permits.clone().try_acquire_many_owned(count) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(SubmitError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::Closed),
        };
        Ok(self.dispatch(events, permit, source, received))
    }

    /// Admits all of `events`, waiting for room in the bound.
    pub async fn submit(
        &self,
        events: Vec<Event>,
        source: Source,
        received: Instant,
    ) -> Result<Receipt, SubmitError> {
        let count = u32::try_from(events.len()).map_err(|_| SubmitError::TooLarge)?;
        if events.len() > self.in_flight.capacity {
            return Err(SubmitError::TooLarge);
        }
        let permit = self
            .in_flight
            .permits
            .clone()
            .acquire_many_owned(count)
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(self.dispatch(events, permit, source, received))
    }

    fn dispatch(
        &self,
        mut events: Vec<Event>,
        mut permit: OwnedSemaphorePermit,
        source: Source,
        received: Instant,
    ) -> Receipt {
        let mut dedup = self
            .dedup
            .as_ref()
            .map(|d| d.lock().expect("the deduplicator never panics"));
        if let Some(dedup) = dedup.as_mut() {
            dedup::retain_new(dedup, &mut events);
            // The duplicates' slots go back at once.
            let surplus = permit.num_permits() - events.len();
            if surplus > 0 {
                drop(permit.split(surplus));
            }
        }
        self.activity
            .lock()
            .expect("room activity never panics")
            .observe(&events);
        let receipt = Arc::new(ReceiptState {
            remaining: AtomicUsize::new(events.len() * self.lanes.len()),
            done: Notify::new(),
            source,
            received,
        });
        if events.is_empty() {
            receipt.done.notify_one();
        }
        for (name, _) in self.lanes.iter() {
            telemetry::sink_queue(name, events.len() as f64);
        }
        for event in events {
            let hash = key_hash(event.key());
            let job = Arc::new(Job {
                json: event.to_json_bytes(),
                event,
                receipt: receipt.clone(),
                _permit: permit.split(1).expect("one permit was taken per event"),
            });
            for (name, lanes) in self.lanes.iter() {
                let lane = (hash % lanes.len() as u64) as usize;
                if lanes[lane].send(job.clone()).is_err() {
                    // The lane's task ended: only at shutdown, after the sources.
                    tracing::error!(sink = %name, "sink lane closed while sources still run");
                }
            }
        }
        self.in_flight.report();
        Receipt(receipt)
    }
}

/// What picks a key's lane: FNV-1a, stable across runs and builds.
fn key_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
fn lane_of(key: &str, lanes: usize) -> usize {
    (key_hash(key) % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use std::time::SystemTime;

    fn event(room: &str) -> Event {
        Event {
            id: new_event_id(SystemTime::now()),
            event_type: EventType::RoomCreated,
            source: Source::Webhook,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("test"),
            data: Data::Room(RoomData {
                room_id: room.to_owned(),
            }),
            unmapped_enums: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_body_is_admitted_whole_or_not_at_all() {
        let (pipeline, mut lanes, in_flight) = Pipeline::new(&[("a".into(), 1)], 3, None);
        let first = pipeline
            .try_submit(
                vec![event("r"), event("r")],
                Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        assert_eq!(
            pipeline
                .try_submit(
                    vec![event("r"), event("r")],
                    Source::Webhook,
                    Instant::now()
                )
                .unwrap_err(),
            SubmitError::Full
        );
        assert_eq!(in_flight.current(), 2);
        let mut jobs = Vec::new();
        lanes[0][0].recv_many(&mut jobs, 10).await;
        for job in &jobs {
            job.acknowledge();
        }
        drop(jobs);
        first.acknowledged().await;
        assert_eq!(in_flight.current(), 0);
    }

    #[tokio::test]
    async fn receipt_waits_for_every_sink() {
        let (pipeline, mut lanes, _) = Pipeline::new(&[("a".into(), 2), ("b".into(), 2)], 10, None);
        let receipt = pipeline
            .try_submit(vec![event("r1")], Source::Webhook, Instant::now())
            .unwrap();
        let lane = lane_of("r1", 2);
        let job_a = lanes[0][lane].recv().await.unwrap();
        job_a.acknowledge();
        use futures_util::FutureExt;
        assert!(
            receipt.acknowledged().now_or_never().is_none(),
            "one sink has not acknowledged yet"
        );
        let job_b = lanes[1][lane].recv().await.unwrap();
        job_b.acknowledge();
        receipt.acknowledged().await;
    }

    #[test]
    fn a_room_always_uses_one_lane() {
        assert_eq!(lane_of("room-1", 8), lane_of("room-1", 8));
        let lanes: std::collections::HashSet<usize> =
            (0..100).map(|i| lane_of(&format!("room-{i}"), 8)).collect();
        assert!(lanes.len() > 4, "keys spread over the lanes");
    }
}
