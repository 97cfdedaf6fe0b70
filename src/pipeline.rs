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
//!
//! Bursty events (voice activity, metadata updates) also need a slot of
//! their own, of which there are fewer, so a flood of them can never take
//! the slots that lifecycle events (rooms, peers, tracks) need. When their
//! slots are full, a body with more of them waits (a webhook is refused with
//! 503 and sent again) or, with `bursty_when_full = "shed"`, its oldest
//! bursty events are dropped and counted; lifecycle events are never shed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::activity::{Activity, KnownRooms};
use crate::dedup::{self, Deduplicator};
use crate::event::{Event, EventType, Source};
use crate::spool::Spool;
use crate::telemetry;

/// One event on its way to the sinks.
#[derive(Debug)]
pub struct Job {
    pub event: Event,
    /// The event as JSON, serialized once for every sink.
    pub json: Bytes,
    receipt: Arc<ReceiptState>,
    _permit: OwnedSemaphorePermit,
    _bursty: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// Called by a sink once the event is safe with it.
    pub fn acknowledge(&self) {
        self.receipt.acknowledge_one();
    }
}

/// Run once every sink acknowledged every event of a submission.
pub type OnAcknowledged = Box<dyn FnOnce() + Send>;

struct ReceiptState {
    remaining: AtomicUsize,
    done: Notify,
    source: Source,
    received: Instant,
    on_acknowledged: std::sync::Mutex<Option<OnAcknowledged>>,
}

impl std::fmt::Debug for ReceiptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptState")
            .field("remaining", &self.remaining)
            .field("source", &self.source)
            .finish()
    }
}

impl ReceiptState {
    fn acknowledge_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            telemetry::acknowledged(self.source, self.received.elapsed());
            self.complete();
        }
    }

    fn complete(&self) {
        let callback = self.on_acknowledged.lock().expect("never poisoned").take();
        if let Some(callback) = callback {
            callback();
        }
        // notify_one keeps a permit if nobody waits yet, so no wake-up is lost.
        self.done.notify_one();
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
    #[error("the pipeline holds its maximum of bursty events (voice activity, metadata updates) in flight")]
    BurstyFull,
    #[error("more events than the pipeline can ever hold at once")]
    TooLarge,
    #[error("the pipeline is shutting down")]
    Closed,
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// How a source's body was taken.
#[derive(Debug)]
pub enum Admitted {
    /// Into the pipeline: safe once the receipt completes.
    Receipt(Receipt),
    /// Into the spool: safe once it is on disk.
    Spooled(crate::spool::Durable),
}

/// How full the pipeline is; shared with the sink lanes, which report it.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    capacity: usize,
    /// When a sink last delivered a batch, in milliseconds after `epoch`.
    progressed: Arc<AtomicU64>,
    epoch: Instant,
}

impl InFlight {
    pub fn current(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn report(&self) {
        telemetry::pipeline_in_flight(self.current());
    }

    /// A sink delivered a batch.
    pub fn progressed(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.progressed.store(now, Ordering::Relaxed);
        self.report();
    }

    /// How long since a sink last delivered anything.
    pub fn since_progress(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.progressed.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Voice activity and metadata updates: many, often, and each superseded by
/// the next.
pub fn is_bursty(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::VadNotification
            | EventType::PeerMetadataUpdated
            | EventType::TrackMetadataUpdated
    )
}

/// What happens to bursty events when their slots are full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// The body waits (a webhook is answered 503 and sent again).
    #[default]
    Wait,
    /// The body's oldest bursty events are dropped, counted, and the rest admitted.
    Shed,
}

/// The bound on bursty events in flight, and what happens beyond it.
#[derive(Debug, Clone, Copy)]
pub struct BurstyLimit {
    pub max_in_flight: usize,
    pub when_full: WhenFull,
}

/// The receiving end of one lane of one sink.
pub type LaneReceiver = mpsc::UnboundedReceiver<Arc<Job>>;

/// The sending side, cloned into every source. Dropping every clone closes
/// the lanes, which is how the sinks learn that the sources have stopped.
#[derive(Debug, Clone)]
pub struct Pipeline {
    in_flight: InFlight,
    /// Slots of bursty events, taken beside their slot in `in_flight`.
    bursty: Arc<Semaphore>,
    bursty_limit: BurstyLimit,
    /// With both sources on: checked and updated under its lock together
    /// with the dispatch to the lanes, so that the first delivery of each
    /// notification reaches the lanes in the order it was admitted.
    dedup: Option<Arc<std::sync::Mutex<Deduplicator>>>,
    /// Sees each event once, after deduplication.
    activity: Arc<std::sync::Mutex<Activity>>,
    /// `[sink][lane]`. The lanes themselves are unbounded: the semaphore bounds them.
    lanes: Arc<Vec<SinkLanes>>,
    /// Where bodies go while the sinks cannot keep up (`spool/`).
    spool: Option<Arc<Spool>>,
}

/// A sink's name and the sending ends of its lanes.
type SinkLanes = (Arc<str>, Vec<mpsc::UnboundedSender<Arc<Job>>>);

impl Pipeline {
    /// A pipeline for the sinks given as (name, lane count). Returns the
    /// receivers as `[sink][lane]`.
    pub fn new(
        sinks: &[(String, usize)],
        capacity: usize,
        bursty_limit: BurstyLimit,
        dedup: Option<Deduplicator>,
    ) -> (Pipeline, Vec<Vec<LaneReceiver>>, InFlight) {
        let in_flight = InFlight {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            progressed: Arc::default(),
            epoch: Instant::now(),
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
        telemetry::bursty_registered();
        let pipeline = Pipeline {
            in_flight: in_flight.clone(),
            bursty: Arc::new(Semaphore::new(bursty_limit.max_in_flight)),
            bursty_limit,
            dedup: dedup.map(|d| Arc::new(std::sync::Mutex::new(d))),
            activity: Arc::default(),
            lanes: Arc::new(senders),
            spool: None,
        };
        (pipeline, receivers, in_flight)
    }

    /// Bodies go through `spool` while it is engaged.
    pub fn with_spool(mut self, spool: Arc<Spool>) -> Pipeline {
        self.spool = Some(spool);
        self
    }

    /// Takes a source's body: its `events` into the pipeline without
    /// waiting, or, with a spool, the body into the spool when the pipeline
    /// is full or the spool is engaged. `events` is left empty when they
    /// were submitted.
    pub fn offer(
        &self,
        body: crate::spool::log::NewRecord,
        events: &mut Vec<Event>,
        received: Instant,
    ) -> Result<Admitted, SubmitError> {
        let source = body.source;
        let Some(spool) = &self.spool else {
            return self
                .try_submit(std::mem::take(events), source, received)
                .map(Admitted::Receipt);
        };
        if events.is_empty() {
            return self
                .try_submit(Vec::new(), source, received)
                .map(Admitted::Receipt);
        }
        // What the replayer could never submit must not be spooled.
        self.fits(events)?;
        let mut gate = spool.gate();
        if !spool.is_engaged(&gate) {
            match self.try_admit(std::mem::take(events), source, received) {
                Ok(receipt) => return Ok(Admitted::Receipt(receipt)),
                Err(SubmitError::Full) => spool.engage(&mut gate, "the pipeline is full"),
                // A flood of voice activity must not put lifecycle events
                // behind it in the spool: it is refused, as without a spool.
                Err(error) => return Err(error),
            }
        }
        Ok(Admitted::Spooled(spool.append(&mut gate, body)?))
    }

    /// Like `offer`, but waits: for room in the pipeline without a spool,
    /// for room in the spool with one.
    pub async fn offer_waiting(
        &self,
        body: crate::spool::log::NewRecord,
        mut events: Vec<Event>,
        received: Instant,
    ) -> Result<(), SubmitError> {
        let Some(spool) = &self.spool else {
            return self.submit(events, body.source, received).await.map(drop);
        };
        loop {
            match self.offer(body.clone(), &mut events, received) {
                Ok(Admitted::Receipt(_)) => return Ok(()),
                Ok(Admitted::Spooled(durable)) => {
                    return match durable.await {
                        Ok(result) => result.map_err(SubmitError::from),
                        Err(_) => Err(SubmitError::Closed),
                    }
                }
                Err(SubmitError::Spool(crate::spool::SpoolError::Full)) => {
                    spool.wait_for_space().await
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The most events a submission may hold and always be admitted.
    pub fn largest_submission(&self) -> usize {
        match self.bursty_limit.when_full {
            WhenFull::Wait => self.in_flight.capacity.min(self.bursty_limit.max_in_flight),
            WhenFull::Shed => self.in_flight.capacity,
        }
    }

    fn fits(&self, events: &[Event]) -> Result<(), SubmitError> {
        let bursty = bursty_count(events);
        let too_bursty = self.bursty_limit.when_full == WhenFull::Wait
            && bursty > self.bursty_limit.max_in_flight;
        if events.len() > self.in_flight.capacity || too_bursty {
            return Err(SubmitError::TooLarge);
        }
        Ok(())
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
        self.fits(&events)?;
        self.try_admit(events, source, received)
    }

    /// `try_submit` for events that `fits` passed.
    fn try_admit(
        &self,
        mut events: Vec<Event>,
        source: Source,
        received: Instant,
    ) -> Result<Receipt, SubmitError> {
        let bursty = self.try_bursty_slots(&mut events)?;
        let count = u32::try_from(events.len()).map_err(|_| SubmitError::TooLarge)?;
        let permit = match self.in_flight.permits.clone().try_acquire_many_owned(count) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(SubmitError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::Closed),
        };
        Ok(self.dispatch(events, permit, bursty, source, received, None))
    }

    /// Takes the slots of the bursty events in `events` without waiting; with
    /// `Shed`, drops the oldest of them for which no slot is free.
    fn try_bursty_slots(
        &self,
        events: &mut Vec<Event>,
    ) -> Result<Option<OwnedSemaphorePermit>, SubmitError> {
        let wanted = bursty_count(events);
        if wanted == 0 {
            return Ok(None);
        }
        loop {
            let take = match self.bursty_limit.when_full {
                WhenFull::Wait => wanted,
                WhenFull::Shed => wanted.min(self.bursty.available_permits()),
            };
            if take == 0 {
                shed_oldest_bursty(events, wanted);
                return Ok(None);
            }
            match self.bursty.clone().try_acquire_many_owned(take as u32) {
                Ok(permit) => {
                    shed_oldest_bursty(events, wanted - take);
                    return Ok(Some(permit));
                }
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    if self.bursty_limit.when_full == WhenFull::Wait {
                        return Err(SubmitError::BurstyFull);
                    }
                    // Another body took the free slots meanwhile: count again.
                }
                Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::Closed),
            }
        }
    }

    /// Admits all of `events`, waiting for room in the bound (and, with a
    /// spool, until it is disengaged, so that they never overtake it).
    pub async fn submit(
        &self,
        events: Vec<Event>,
        source: Source,
        received: Instant,
    ) -> Result<Receipt, SubmitError> {
        if let Some(spool) = &self.spool {
            spool.disengaged().await;
        }
        self.admit(events, source, received, None).await
    }

    /// `submit`, without regard to the spool, running `on_acknowledged` once
    /// every sink acknowledged every event: how the spool's replayer submits.
    pub async fn submit_acknowledging(
        &self,
        events: Vec<Event>,
        source: Source,
        received: Instant,
        on_acknowledged: OnAcknowledged,
    ) -> Result<Receipt, SubmitError> {
        self.admit(events, source, received, Some(on_acknowledged))
            .await
    }

    /// Admits all of `events`, waiting for room in the bound.
    async fn admit(
        &self,
        mut events: Vec<Event>,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Result<Receipt, SubmitError> {
        self.fits(&events)?;
        let bursty = match self.bursty_limit.when_full {
            WhenFull::Shed => self.try_bursty_slots(&mut events)?,
            WhenFull::Wait => match bursty_count(&events) {
                0 => None,
                wanted => Some(
                    self.bursty
                        .clone()
                        .acquire_many_owned(wanted as u32)
                        .await
                        .map_err(|_| SubmitError::Closed)?,
                ),
            },
        };
        let count = u32::try_from(events.len()).map_err(|_| SubmitError::TooLarge)?;
        let permit = self
            .in_flight
            .permits
            .clone()
            .acquire_many_owned(count)
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(self.dispatch(events, permit, bursty, source, received, on_acknowledged))
    }

    fn dispatch(
        &self,
        mut events: Vec<Event>,
        mut permit: OwnedSemaphorePermit,
        mut bursty: Option<OwnedSemaphorePermit>,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
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
            if let Some(slots) = bursty.as_mut() {
                let surplus = slots.num_permits() - bursty_count(&events);
                if surplus > 0 {
                    drop(slots.split(surplus));
                }
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
            on_acknowledged: std::sync::Mutex::new(on_acknowledged),
        });
        if events.is_empty() {
            receipt.complete();
        }
        for (name, _) in self.lanes.iter() {
            telemetry::sink_queue(name, events.len() as f64);
        }
        for event in events {
            let event_type = event.event_type;
            let hash = key_hash(event.key());
            let job = Arc::new(Job {
                json: event.to_json_bytes(),
                event,
                receipt: receipt.clone(),
                _permit: permit.split(1).expect("one permit was taken per event"),
                _bursty: if is_bursty(event_type) {
                    bursty.as_mut().and_then(|slots| slots.split(1))
                } else {
                    None
                },
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

fn bursty_count(events: &[Event]) -> usize {
    events.iter().filter(|e| is_bursty(e.event_type)).count()
}

/// Drops the first `excess` bursty events, keeping the latest state of each
/// burst; counted by type.
fn shed_oldest_bursty(events: &mut Vec<Event>, excess: usize) {
    let mut left = excess;
    events.retain(|event| {
        if left > 0 && is_bursty(event.event_type) {
            left -= 1;
            telemetry::shed(event.event_type);
            false
        } else {
            true
        }
    });
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

    const NO_BURSTY_LIMIT: BurstyLimit = BurstyLimit {
        max_in_flight: 100,
        when_full: WhenFull::Wait,
    };

    fn vad(room: &str) -> Event {
        Event {
            event_type: EventType::VadNotification,
            ..event(room)
        }
    }

    fn types(events: &[Arc<Job>]) -> Vec<EventType> {
        events.iter().map(|job| job.event.event_type).collect()
    }

    #[tokio::test]
    async fn bursty_events_never_take_the_slots_of_lifecycle_events() {
        let limit = BurstyLimit {
            max_in_flight: 2,
            when_full: WhenFull::Wait,
        };
        let (pipeline, mut lanes, in_flight) = Pipeline::new(&[("a".into(), 1)], 5, limit, None);
        let now = Instant::now;
        let _first = pipeline
            .try_submit(vec![vad("r"), vad("r")], Source::Webhook, now())
            .unwrap();
        // The bursty slots are full: more voice activity waits...
        assert_eq!(
            pipeline
                .try_submit(vec![vad("r"), event("r")], Source::Webhook, now())
                .unwrap_err(),
            SubmitError::BurstyFull
        );
        // ...a body that could never fit is refused as such...
        assert_eq!(
            pipeline
                .try_submit(vec![vad("r"), vad("r"), vad("r")], Source::Webhook, now())
                .unwrap_err(),
            SubmitError::TooLarge
        );
        // ...and lifecycle events still have every other slot.
        let _second = pipeline
            .try_submit(
                vec![event("r"), event("r"), event("r")],
                Source::Webhook,
                now(),
            )
            .unwrap();
        assert_eq!(in_flight.current(), 5);
        let mut jobs = Vec::new();
        lanes[0][0].recv_many(&mut jobs, 10).await;
        assert_eq!(jobs.len(), 5);
        // Once the voice activity is done with, its slots come back.
        for job in &jobs {
            job.acknowledge();
        }
        drop(jobs);
        pipeline
            .try_submit(vec![vad("r"), vad("r")], Source::Webhook, now())
            .unwrap();
    }

    #[tokio::test]
    async fn shedding_drops_the_oldest_bursty_events_and_never_lifecycle_ones() {
        let limit = BurstyLimit {
            max_in_flight: 2,
            when_full: WhenFull::Shed,
        };
        let (pipeline, mut lanes, _) = Pipeline::new(&[("a".into(), 1)], 10, limit, None);
        let mut body = vec![vad("r"), event("r"), vad("r"), vad("r")];
        body[0].id = new_event_id(SystemTime::now());
        let oldest = body[0].id;
        let _receipt = pipeline
            .try_submit(body, Source::Webhook, Instant::now())
            .unwrap();
        let mut jobs = Vec::new();
        lanes[0][0].recv_many(&mut jobs, 10).await;
        assert_eq!(
            types(&jobs),
            [
                EventType::RoomCreated,
                EventType::VadNotification,
                EventType::VadNotification
            ]
        );
        assert!(jobs.iter().all(|job| job.event.id != oldest));
        // Full now: the next body keeps its lifecycle event and sheds the rest.
        let _receipt = pipeline
            .try_submit(vec![vad("r"), event("r")], Source::Webhook, Instant::now())
            .unwrap();
        let mut more = Vec::new();
        lanes[0][0].recv_many(&mut more, 10).await;
        assert_eq!(types(&more), [EventType::RoomCreated]);
    }

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
        let (pipeline, mut lanes, in_flight) =
            Pipeline::new(&[("a".into(), 1)], 3, NO_BURSTY_LIMIT, None);
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
        let (pipeline, mut lanes, _) = Pipeline::new(
            &[("a".into(), 2), ("b".into(), 2)],
            10,
            NO_BURSTY_LIMIT,
            None,
        );
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
