//! Fan-out: an admitted body to one lane of every sink, and its receipt.
//!
//! A body is admitted only if the bound on events in flight allows all of
//! its events (a body is never half admitted). Each sink then receives the
//! body as parts, one per lane its events hash to: the lane is chosen by the
//! event's key, so the events of a room stay in order while other rooms
//! publish in parallel. A part is one unit: one channel send, one
//! acknowledgement. The submitter's `Receipt` completes when every part was
//! acknowledged, and the body's slots in the bound are freed when the last
//! part is dropped, so memory stays bounded whatever the input rate.
//!
//! Bursty events (voice activity, metadata updates) also need a slot of
//! their own, of which there are fewer, so a flood of them can never take
//! the slots that lifecycle events (rooms, peers, tracks) need. When their
//! slots are full, a body with more of them waits or, with
//! `bursty_when_full = "shed"`, its oldest bursty events are dropped and
//! counted; lifecycle events are never shed.
//!
//! Every admission that fails hands the messages back (`Refused`), so a
//! caller can always wait and try again with the same body.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::admin::tap::Tap;
use crate::core::event::{Message, Source};
use crate::core::route::Filter;
use crate::pipeline::activity::{Activity, KnownRooms};
use crate::pipeline::dedup::{self, Deduplicator};
use crate::telemetry;

/// Run once every sink acknowledged every event of a submission.
pub type OnAcknowledged = Box<dyn FnOnce() + Send>;

/// How many parts of one body are still unacknowledged, and who waits.
struct Completion {
    remaining: AtomicUsize,
    /// Parts still unacknowledged of each sink, for a spool replay that
    /// must know whether one sink has the body: inline for the first
    /// `INLINE` sinks, so that a body allocates nothing for them.
    of_sink: [AtomicU32; INLINE],
    of_more_sinks: Box<[AtomicU32]>,
    /// Notified (every waiter) whenever a sink finished its parts, the
    /// body completed, or its copy in the spool became durable.
    changed: Notify,
    /// A copy of the body is on its way to the spool's log (`LOGGED`), or
    /// synced there (`DURABLE`): a crash no longer loses its events.
    logged: AtomicU8,
    /// For a webhook body: the bodies that carried the first copies of the
    /// events deduplication dropped from it. Its answer waits for them too.
    after: std::sync::OnceLock<Box<[Receipt]>>,
    /// Called with a sink's index once that sink acknowledged every part
    /// of the body it was given (a copy in the spool moves that sink's
    /// cursor so, whether or not a replay is still reading). A lock, not
    /// a `OnceLock`: it orders the hook's setting against the parts'
    /// counts, so that either the setter or the last acknowledgement sees
    /// the other.
    sink_done: Mutex<Option<SinkDone>>,
    source: Source,
    received: Instant,
    on_acknowledged: Mutex<Option<OnAcknowledged>>,
}

/// Sinks whose parts a completion counts without allocating.
const INLINE: usize = 4;

/// What runs when one sink is done with a body (`Receipt::on_sink_done`).
pub type SinkDone = Arc<dyn Fn(usize) + Send + Sync>;

const LOGGED: u8 = 1;
const DURABLE: u8 = 2;

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("remaining", &self.remaining)
            .field("source", &self.source)
            .finish()
    }
}

impl Completion {
    fn new(
        sinks: usize,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Arc<Completion> {
        Arc::new(Completion {
            remaining: AtomicUsize::new(0),
            of_sink: Default::default(),
            of_more_sinks: (INLINE..sinks).map(|_| AtomicU32::new(0)).collect(),
            changed: Notify::new(),
            logged: AtomicU8::new(0),
            after: std::sync::OnceLock::new(),
            sink_done: Mutex::new(None),
            source,
            received,
            on_acknowledged: Mutex::new(on_acknowledged),
        })
    }

    /// The unacknowledged parts of sink `sink`.
    fn parts_of(&self, sink: usize) -> &AtomicU32 {
        match sink.checked_sub(INLINE) {
            None => &self.of_sink[sink],
            Some(more) => &self.of_more_sinks[more],
        }
    }

    fn acknowledge_part(&self, sink: usize) {
        if self.parts_of(sink).fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_waiters();
            let hook = self.sink_done.lock().expect("never poisoned").clone();
            if let Some(hook) = hook {
                hook(sink);
            }
        }
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
        self.changed.notify_waiters();
    }

    /// Whether every sink acknowledged the body's own events.
    fn is_complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Whether the body's own events are safe: acknowledged, or on disk.
    fn is_safe(&self) -> bool {
        self.is_complete() || self.logged.load(Ordering::Acquire) == DURABLE
    }

    /// Waits until `ready` holds; `ready` is read after each change.
    async fn until(&self, ready: impl Fn(&Completion) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change between is missed.
            changed.as_mut().enable();
            if ready(self) {
                return;
            }
            changed.await;
        }
    }
}

/// An admitted body, shared by its parts.
#[derive(Debug)]
struct Admitted {
    messages: Vec<Message>,
    completion: Arc<Completion>,
}

/// A part's slots in its sink's bound: freed when the part is dropped, so
/// each sink's bound counts only what that sink still holds.
#[derive(Debug)]
struct Slots {
    _events: OwnedSemaphorePermit,
    _bursty: Option<OwnedSemaphorePermit>,
    /// The slots of the body's events the sink's route leaves out, which
    /// its parts keep in memory all the same: shared by the sink's parts,
    /// freed with the last of them.
    _pinned: Option<Arc<OwnedSemaphorePermit>>,
}

/// The messages of one body that go to one lane of one sink, in order.
#[derive(Debug)]
pub struct Part {
    body: Arc<Admitted>,
    /// Indices into the body's messages; `None` when the part is all of them.
    indices: Option<Box<[u32]>>,
    /// The sink's index in fan-out.
    sink: usize,
    _slots: Slots,
}

impl Part {
    /// The part of `body` for `sink` of the messages at `indices` (all of
    /// them when None), with its share of the sink's slots in `taken`.
    fn new(
        body: &Arc<Admitted>,
        sink: usize,
        indices: Option<Box<[u32]>>,
        taken: &mut Taken,
    ) -> Part {
        let bursty = |i: &u32| body.messages[*i as usize].event.event_type.is_bursty();
        let (len, bursty_in_part) = match &indices {
            None => (body.messages.len(), bursty_count(&body.messages)),
            Some(indices) => (indices.len(), indices.iter().filter(|i| bursty(i)).count()),
        };
        let share = |slots: &mut Option<OwnedSemaphorePermit>, n: usize| {
            slots
                .as_mut()
                .and_then(|slots| slots.split(n))
                .expect("a sink's slots cover its parts")
        };
        let slots = taken.at(sink);
        Part {
            body: body.clone(),
            indices,
            sink,
            _slots: Slots {
                _events: share(&mut slots.events, len),
                _bursty: (bursty_in_part > 0).then(|| share(&mut slots.bursty, bursty_in_part)),
                _pinned: slots.pinned.clone(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.indices
            .as_ref()
            .map_or(self.body.messages.len(), |i| i.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part's `n`th message.
    pub fn get(&self, n: usize) -> &Message {
        match &self.indices {
            None => &self.body.messages[n],
            Some(indices) => &self.body.messages[indices[n] as usize],
        }
    }

    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        (0..self.len()).map(|n| self.get(n))
    }

    /// Called by a lane once every message of the part is safe with its sink.
    pub fn acknowledge(&self) {
        self.body.completion.acknowledge_part(self.sink);
    }
}

/// Completes when every sink acknowledged every event of one submission.
#[derive(Debug, Clone)]
pub struct Receipt(Arc<Completion>);

impl Receipt {
    /// Whether the submission is safe: every sink acknowledged its events,
    /// and the events deduplication dropped from it are safe in the bodies
    /// that carried their first copies.
    pub fn is_acknowledged(&self) -> bool {
        self.0.is_complete() && self.originals().iter().all(|r| r.0.is_safe())
    }

    /// Waits until sink `sink` acknowledged every event of the submission
    /// it takes, and the first copies of those deduplication dropped from
    /// it are safe with that sink too: acknowledged by it, or on disk (ahead
    /// of this body in the log).
    pub async fn acknowledged_by(&self, sink: usize) {
        let done = move |c: &Completion| c.parts_of(sink).load(Ordering::Acquire) == 0;
        self.0.until(done).await;
        for original in self.originals() {
            let safe = move |c: &Completion| done(c) || c.logged.load(Ordering::Acquire) == DURABLE;
            original.0.until(safe).await;
        }
    }

    /// Runs `hook` with each sink's index (of `sinks`) once that sink
    /// acknowledged its parts of the body: at once for a sink that is done
    /// already; possibly twice for one that finishes meanwhile. Only for a
    /// body without first copies elsewhere (`after`), whose sinks are done
    /// with it when they acknowledged its own parts.
    pub fn on_sink_done(&self, hook: SinkDone, sinks: usize) {
        debug_assert!(self.originals().is_empty());
        *self.0.sink_done.lock().expect("never poisoned") = Some(hook.clone());
        for sink in 0..sinks {
            if self.0.parts_of(sink).load(Ordering::Acquire) == 0 {
                hook(sink);
            }
        }
    }

    /// Whether the body's own events are all it stands for (no events
    /// dropped as copies of a body that is not yet safe).
    pub fn has_no_originals(&self) -> bool {
        self.originals().is_empty()
    }

    /// Waits until `is_acknowledged` holds.
    pub async fn acknowledged(&self) {
        self.0.until(Completion::is_complete).await;
        for original in self.originals() {
            original.0.until(Completion::is_safe).await;
        }
    }

    fn originals(&self) -> &[Receipt] {
        self.0.after.get().map_or(&[], |after| after)
    }

    /// A copy of the body is on its way to the spool's log, ahead of every
    /// body appended after this call.
    pub fn logged(&self) {
        self.0.logged.store(LOGGED, Ordering::Release);
    }

    /// The copy is synced: the events are safe from a crash.
    pub fn durable(&self) {
        self.0.logged.store(DURABLE, Ordering::Release);
        self.0.changed.notify_waiters();
    }

    /// The copy could not be written: the events are only in memory.
    pub fn not_logged(&self) {
        self.0.logged.store(0, Ordering::Release);
    }

    /// Whether a copy of the body is in the log, or on its way there.
    pub fn is_logged(&self) -> bool {
        self.0.logged.load(Ordering::Acquire) != 0
    }
}

/// What carries a delivery deduplication recorded: what the second copy of
/// a notification, dropped, stands for.
#[derive(Debug, Clone)]
pub enum Carrier {
    /// A body appended to the spool (ahead of every later append), unless
    /// its write failed.
    Logged(LogWrite),
    /// A body in fan-out: safe once acknowledged, or once its copy in the
    /// spool is durable.
    Body(Receipt),
}

impl Carrier {
    /// Whether the first copy is gone: a body whose write to the spool
    /// failed (its source was answered 503, or waits to offer it again).
    /// A copy of it is then no duplicate.
    fn is_lost(&self) -> bool {
        matches!(self, Carrier::Logged(write) if write.has_failed())
    }
}

/// Whether a body sent to the spool's writer was written; the writer says
/// when it was not.
#[derive(Debug, Clone, Default)]
pub struct LogWrite(Arc<std::sync::atomic::AtomicBool>);

impl LogWrite {
    pub fn failed(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn has_failed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("a sink holds its maximum of events in flight")]
    Full,
    #[error(
        "a sink holds its maximum of bursty events (voice activity, metadata updates) in flight"
    )]
    BurstyFull,
    #[error("more events than the pipeline can ever hold at once")]
    TooLarge,
    #[error("the pipeline is shutting down")]
    Closed,
}

/// An admission that failed, with what was offered, untouched.
#[derive(Debug)]
pub struct Refused<B, E = SubmitError> {
    pub body: B,
    pub reason: E,
}

impl<B, E> Refused<B, E> {
    pub fn new(body: B, reason: E) -> Refused<B, E> {
        Refused { body, reason }
    }
}

/// One sink's bound: its slots for events and for bursty events, and when
/// it last delivered.
#[derive(Debug)]
struct Bound {
    events: Arc<Semaphore>,
    bursty: Arc<Semaphore>,
    /// When the sink last delivered a batch, in milliseconds after `epoch`.
    progressed: AtomicU64,
}

/// How full each sink's bound is; shared with the sink lanes, which report
/// progress.
#[derive(Debug, Clone)]
pub struct InFlight {
    bounds: Arc<[Bound]>,
    /// Of each sink.
    capacity: usize,
    epoch: Instant,
}

impl InFlight {
    /// Events held, summed over the sinks (an event two sinks take counts
    /// once for each).
    pub fn current(&self) -> usize {
        (0..self.bounds.len()).map(|sink| self.of(sink)).sum()
    }

    /// Events sink `sink` holds.
    pub fn of(&self, sink: usize) -> usize {
        self.capacity - self.bounds[sink].events.available_permits()
    }

    /// The bound of each sink.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reports the events in the fullest sink's bound.
    pub fn report(&self) {
        let fullest = (0..self.bounds.len()).map(|sink| self.of(sink)).max();
        telemetry::pipeline_in_flight(fullest.unwrap_or(0));
    }

    /// The handle sink `sink`'s lanes report progress with.
    pub fn sink(&self, sink: usize) -> SinkProgress {
        SinkProgress {
            in_flight: self.clone(),
            sink,
        }
    }

    /// How long since sink `sink` last delivered anything.
    pub fn since_progress(&self, sink: usize) -> std::time::Duration {
        let last = self.bounds[sink].progressed.load(Ordering::Relaxed);
        let last = std::time::Duration::from_millis(last);
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Whether every sink is moving: it holds nothing, or at most half of
    /// its bound and it delivered within `within`.
    pub fn moving(&self, within: std::time::Duration) -> bool {
        (0..self.bounds.len()).all(|sink| {
            let held = self.of(sink);
            held == 0 || (held <= self.capacity / 2 && self.since_progress(sink) < within)
        })
    }
}

/// What one sink's lanes report their progress through.
#[derive(Debug, Clone)]
pub struct SinkProgress {
    in_flight: InFlight,
    sink: usize,
}

impl SinkProgress {
    /// The sink delivered a batch. (The gauge of events in flight is read
    /// off the bounds at each scrape: a lane that wrote it here could write
    /// an older reading after a newer one.)
    pub fn progressed(&self) {
        self.took_work();
    }

    /// A lane of the sink finished its last batch and took the next.
    pub fn took_work(&self) {
        let now = self.in_flight.epoch.elapsed().as_millis() as u64;
        self.in_flight.bounds[self.sink]
            .progressed
            .store(now, Ordering::Relaxed);
    }
}

/// What happens to bursty events when their slots are full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// The body waits (a webhook is answered 503, or spooled).
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
pub type LaneReceiver = mpsc::UnboundedReceiver<Part>;

/// A sink as fan-out sees it: its name, how many lanes it has, and which
/// events it takes.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub lanes: usize,
    pub route: Filter,
}

impl SinkSpec {
    /// A sink that takes every event.
    pub fn all(name: &str, lanes: usize) -> SinkSpec {
        SinkSpec {
            name: name.to_owned(),
            lanes,
            route: Filter::ALL,
        }
    }
}

/// A sink's name, its queue gauge, its route and the sending ends of its
/// lanes.
#[derive(Debug)]
struct SinkLanes {
    name: Arc<str>,
    metrics: telemetry::SinkMetrics,
    route: Filter,
    lanes: Vec<mpsc::UnboundedSender<Part>>,
}

/// A sink's slots taken for one submission: for its events, and for its
/// bursty events; `None` where it takes none.
#[derive(Debug, Default)]
struct SinkSlots {
    events: Option<OwnedSemaphorePermit>,
    bursty: Option<OwnedSemaphorePermit>,
    /// The slots of the events the sink's route leaves out, shared by its
    /// parts (`Slots::_pinned`).
    pinned: Option<Arc<OwnedSemaphorePermit>>,
}

/// The slots one submission took, by sink index: inline for the first few
/// sinks, so admitting a body allocates nothing for them.
#[derive(Debug, Default)]
struct Taken {
    first: [SinkSlots; 4],
    more: Vec<SinkSlots>,
}

impl Taken {
    fn at(&mut self, sink: usize) -> &mut SinkSlots {
        match sink.checked_sub(self.first.len()) {
            None => &mut self.first[sink],
            Some(more) => {
                if self.more.len() <= more {
                    self.more.resize_with(more + 1, SinkSlots::default);
                }
                &mut self.more[more]
            }
        }
    }
}

/// Which sinks a submission goes to, and whether deduplication and room
/// activity see it: a body from a source goes to every sink and is seen; a
/// spooled body replayed to one sink had both when it was spooled.
#[derive(Debug)]
struct Reach {
    sinks: Range<usize>,
    observe: bool,
}

/// The sending side, cloned into admission and the spool's replayers.
/// Dropping every clone closes the lanes, which is how the sinks learn that
/// the sources have stopped.
#[derive(Debug, Clone)]
pub struct Fanout {
    in_flight: InFlight,
    bursty_limit: BurstyLimit,
    /// With both sources on: checked and updated under its lock together
    /// with the dispatch to the lanes, so that the first delivery of each
    /// notification reaches the lanes in the order it was admitted.
    dedup: Option<Arc<Mutex<Deduplicator<Carrier>>>>,
    /// Sees each event once, after deduplication.
    activity: Arc<Mutex<Activity>>,
    /// `[sink][lane]`. The lanes themselves are unbounded: each sink's
    /// bound limits them.
    lanes: Arc<Vec<SinkLanes>>,
    /// Shown each event as it is accepted, after deduplication.
    tap: Option<Tap>,
}

impl Fanout {
    /// A fan-out to `sinks`, each with its own bound of `capacity` events.
    /// Returns the receivers as `[sink][lane]`.
    pub fn new(
        sinks: &[SinkSpec],
        capacity: usize,
        bursty_limit: BurstyLimit,
        dedup: Option<Deduplicator<Carrier>>,
    ) -> (Fanout, Vec<Vec<LaneReceiver>>, InFlight) {
        let in_flight = InFlight {
            bounds: sinks
                .iter()
                .map(|_| Bound {
                    events: Arc::new(Semaphore::new(capacity)),
                    bursty: Arc::new(Semaphore::new(bursty_limit.max_in_flight)),
                    progressed: AtomicU64::new(0),
                })
                .collect(),
            capacity,
            epoch: Instant::now(),
        };
        telemetry::pipeline_capacity(capacity);
        telemetry::rooms_known(0);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for SinkSpec { name, lanes, route } in sinks {
            let (tx, rx): (Vec<_>, Vec<_>) = (0..(*lanes).max(1))
                .map(|_| mpsc::unbounded_channel())
                .unzip();
            senders.push(SinkLanes {
                name: Arc::from(name.as_str()),
                metrics: telemetry::SinkMetrics::new(name),
                route: *route,
                lanes: tx,
            });
            receivers.push(rx);
        }
        telemetry::bursty_registered();
        let fanout = Fanout {
            in_flight: in_flight.clone(),
            bursty_limit,
            dedup: dedup.map(|d| Arc::new(Mutex::new(d))),
            activity: Arc::default(),
            lanes: Arc::new(senders),
            tap: None,
        };
        (fanout, receivers, in_flight)
    }

    /// Whether every sink is moving (`InFlight::moving`).
    pub fn sinks_moving(&self, within: std::time::Duration) -> bool {
        self.in_flight.moving(within)
    }

    /// Shows every event to `tap` as it is accepted.
    pub fn with_tap(self, tap: Tap) -> Fanout {
        Fanout {
            tap: Some(tap),
            ..self
        }
    }

    /// The names of the sinks, in their order.
    pub fn sink_names(&self) -> Vec<Arc<str>> {
        self.lanes.iter().map(|sink| sink.name.clone()).collect()
    }

    fn all(&self) -> Range<usize> {
        0..self.lanes.len()
    }

    /// Every sink, with deduplication and room activity: where a body
    /// from a source goes.
    fn everywhere(&self) -> Reach {
        Reach {
            sinks: self.all(),
            observe: true,
        }
    }

    /// The most events a submission may hold and always be admitted.
    pub fn largest_submission(&self) -> usize {
        match self.bursty_limit.when_full {
            WhenFull::Wait => self.in_flight.capacity.min(self.bursty_limit.max_in_flight),
            WhenFull::Shed => self.in_flight.capacity,
        }
    }

    /// `TooLarge` for a body that could never be admitted whole.
    pub fn fits(&self, messages: &[Message]) -> Result<(), SubmitError> {
        let too_bursty = self.bursty_limit.when_full == WhenFull::Wait
            && bursty_count(messages) > self.bursty_limit.max_in_flight;
        if messages.len() > self.in_flight.capacity || too_bursty {
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

    /// What dispatch does before the lanes, for a body that goes to the
    /// spool instead: returns the indices of the events the other source
    /// already delivered (the replay leaves them out) and counts the rest
    /// in the room activity. Called under the spool's gate, which keeps the
    /// order that dispatch's lock keeps for the others.
    pub fn observe_spooled(&self, messages: &[Message], write: &LogWrite) -> Box<[u32]> {
        let mut skips = Vec::new();
        if let Some(dedup) = &self.dedup {
            let mut dedup = dedup.lock().expect("the deduplicator never panics");
            let now = Instant::now();
            let carrier = Carrier::Logged(write.clone());
            for (i, message) in messages.iter().enumerate() {
                // Left out of the replay only where the first copy outlives
                // a crash: logged ahead of this body, or acknowledged.
                let skip = match dedup.duplicate_of(&message.event, now, &carrier) {
                    None => false,
                    Some(Carrier::Logged(first)) => !first.has_failed(),
                    Some(Carrier::Body(first)) => first.0.is_complete() || first.is_logged(),
                };
                if skip {
                    skips.push(i as u32);
                }
            }
            dedup::dropped(&dedup, skips.len());
        }
        let kept = || {
            let mut skipped = skips.iter().peekable();
            messages.iter().enumerate().filter_map(move |(i, m)| {
                if skipped.peek() == Some(&&(i as u32)) {
                    skipped.next();
                    None
                } else {
                    Some(m)
                }
            })
        };
        self.activity
            .lock()
            .expect("room activity never panics")
            .observe(kept().map(|m| &m.event));
        if let Some(tap) = &self.tap {
            tap.publish(kept());
        }
        skips.into_boxed_slice()
    }

    /// Counts in the room activity events replayed from a spool that a
    /// previous run accepted (this run has not seen them).
    pub fn observe_recovered(&self, messages: &[Message]) {
        self.activity
            .lock()
            .expect("room activity never panics")
            .observe(messages.iter().map(|m| &m.event));
    }

    /// The slots sink `sink` needs in its bound for `messages`: all of
    /// them if it takes any, since its parts keep the whole body in memory
    /// until it acknowledged them.
    fn pinned(&self, sink: usize, messages: &[Message]) -> usize {
        let route = self.lanes[sink].route;
        let takes_any = route.takes_all()
            || messages
                .iter()
                .any(|message| route.takes(message.event.event_type));
        if takes_any {
            messages.len()
        } else {
            0
        }
    }

    /// How many of `messages` sink `sink` takes, and how many of those are
    /// bursty.
    fn counts(&self, sink: usize, messages: &[Message]) -> (usize, usize) {
        let route = self.lanes[sink].route;
        let mut taken = 0;
        let mut bursty = 0;
        for message in messages {
            let event_type = message.event.event_type;
            if route.takes_all() || route.takes(event_type) {
                taken += 1;
                bursty += usize::from(event_type.is_bursty());
            }
        }
        (taken, bursty)
    }

    /// Admits all of `messages` to every sink, or none, without waiting:
    /// `Full` when a sink's bound would be passed, `BurstyFull` when its
    /// bursty slots would.
    pub fn try_admit(
        &self,
        messages: Vec<Message>,
        source: Source,
        received: Instant,
    ) -> Result<Receipt, Refused<Vec<Message>>> {
        if let Err(reason) = self.fits(&messages) {
            return Err(Refused::new(messages, reason));
        }
        let mut taken = Taken::default();
        for sink in self.all() {
            let count = self.pinned(sink, &messages);
            if count == 0 {
                continue;
            }
            let bound = &self.in_flight.bounds[sink];
            match bound.events.clone().try_acquire_many_owned(count as u32) {
                Ok(permit) => taken.at(sink).events = Some(permit),
                Err(TryAcquireError::NoPermits) => {
                    return Err(Refused::new(messages, SubmitError::Full))
                }
                Err(TryAcquireError::Closed) => {
                    return Err(Refused::new(messages, SubmitError::Closed))
                }
            }
        }
        let messages = self.try_bursty_slots(messages, self.all(), &mut taken)?;
        Ok(self.dispatch(messages, self.everywhere(), taken, source, received, None))
    }

    /// Admits all of `messages` to every sink, waiting for room in their
    /// bounds; runs `on_acknowledged` once every sink acknowledged every
    /// event.
    pub async fn admit(
        &self,
        messages: Vec<Message>,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Result<Receipt, Refused<Vec<Message>>> {
        self.admit_in(
            self.everywhere(),
            messages,
            source,
            received,
            on_acknowledged,
        )
        .await
    }

    /// Admits all of `messages` to sink `sink` alone, waiting for room in
    /// its bound, with no deduplication nor room activity (a spooled body,
    /// which had both when it was spooled); runs `on_acknowledged` once the
    /// sink acknowledged every event it takes.
    pub async fn admit_to(
        &self,
        sink: usize,
        messages: Vec<Message>,
        source: Source,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Result<Receipt, Refused<Vec<Message>>> {
        let received = Instant::now();
        let reach = Reach {
            sinks: sink..sink + 1,
            observe: false,
        };
        self.admit_in(reach, messages, source, received, on_acknowledged)
            .await
    }

    async fn admit_in(
        &self,
        reach: Reach,
        messages: Vec<Message>,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Result<Receipt, Refused<Vec<Message>>> {
        if let Err(reason) = self.fits(&messages) {
            return Err(Refused::new(messages, reason));
        }
        // Sinks are waited for in their order, so two waiting submissions
        // can never hold each other's slots.
        let mut taken = Taken::default();
        let messages = match self.bursty_limit.when_full {
            WhenFull::Shed => self.try_bursty_slots(messages, reach.sinks.clone(), &mut taken)?,
            WhenFull::Wait => {
                for sink in reach.sinks.clone() {
                    let (_, wanted) = self.counts(sink, &messages);
                    if wanted == 0 {
                        continue;
                    }
                    let slots = self.in_flight.bounds[sink].bursty.clone();
                    match slots.acquire_many_owned(wanted as u32).await {
                        Ok(slots) => taken.at(sink).bursty = Some(slots),
                        Err(_) => return Err(Refused::new(messages, SubmitError::Closed)),
                    }
                }
                messages
            }
        };
        for sink in reach.sinks.clone() {
            let count = self.pinned(sink, &messages);
            if count == 0 {
                continue;
            }
            let slots = self.in_flight.bounds[sink].events.clone();
            match slots.acquire_many_owned(count as u32).await {
                Ok(permit) => taken.at(sink).events = Some(permit),
                Err(_) => return Err(Refused::new(messages, SubmitError::Closed)),
            }
        }
        Ok(self.dispatch(messages, reach, taken, source, received, on_acknowledged))
    }

    /// Waits until every sink has `wanted` bursty slots free (they may be
    /// taken again before the caller tries).
    pub async fn bursty_room(&self, wanted: usize) {
        let wanted = wanted.min(self.bursty_limit.max_in_flight) as u32;
        for bound in self.in_flight.bounds.iter() {
            let _ = bound.bursty.acquire_many(wanted).await;
        }
    }

    /// Takes into `taken`, in each of `sinks`, the slots of the bursty
    /// messages it takes, without waiting; with `Shed`, drops the oldest of
    /// them for which a sink has no slot free.
    fn try_bursty_slots(
        &self,
        mut messages: Vec<Message>,
        sinks: Range<usize>,
        taken: &mut Taken,
    ) -> Result<Vec<Message>, Refused<Vec<Message>>> {
        loop {
            let mut short = None;
            for sink in sinks.clone() {
                let (_, wanted) = self.counts(sink, &messages);
                if wanted == 0 {
                    continue;
                }
                let slots = &self.in_flight.bounds[sink].bursty;
                match slots.clone().try_acquire_many_owned(wanted as u32) {
                    Ok(permit) => taken.at(sink).bursty = Some(permit),
                    Err(TryAcquireError::NoPermits) => {
                        short = Some((sink, wanted - wanted.min(slots.available_permits())));
                        break;
                    }
                    Err(TryAcquireError::Closed) => {
                        return Err(Refused::new(messages, SubmitError::Closed))
                    }
                }
            }
            let Some((sink, excess)) = short else {
                return Ok(messages);
            };
            for sink in sinks.clone() {
                taken.at(sink).bursty = None;
            }
            if self.bursty_limit.when_full == WhenFull::Wait {
                return Err(Refused::new(messages, SubmitError::BurstyFull));
            }
            // Shed what this sink has no slot for, then count again: other
            // bodies may have taken slots meanwhile.
            let route = self.lanes[sink].route;
            shed_oldest_bursty(&mut messages, excess.max(1), |event_type| {
                route.takes_all() || route.takes(event_type)
            });
        }
    }

    fn dispatch(
        &self,
        mut messages: Vec<Message>,
        reach: Reach,
        mut taken: Taken,
        source: Source,
        received: Instant,
        on_acknowledged: Option<OnAcknowledged>,
    ) -> Receipt {
        let completion = Completion::new(self.lanes.len(), source, received, on_acknowledged);
        // Held until the parts are sent: the first delivery of each
        // notification reaches the lanes in the order it was admitted.
        let dedup = self.observe(&mut messages, &completion, reach.observe);
        if messages.is_empty() {
            completion.complete();
            return Receipt(completion);
        }
        let (plan, per_sink) = self.plan(&messages, reach.sinks.clone());
        if plan.is_empty() {
            // No sink takes any of these events.
            completion.complete();
            return Receipt(completion);
        }
        for (sink, _, _) in &plan {
            completion.parts_of(*sink).fetch_add(1, Ordering::Relaxed);
        }
        completion.remaining.store(plan.len(), Ordering::Release);
        let body = Arc::new(Admitted {
            messages,
            completion: completion.clone(),
        });
        for (sink, events) in reach.sinks.clone().zip(per_sink) {
            self.lanes[sink].metrics.queued(events as f64);
            let left_out = body.messages.len() - events;
            if events > 0 && left_out > 0 {
                let slots = taken.at(sink);
                slots.pinned = slots
                    .events
                    .as_mut()
                    .and_then(|e| e.split(left_out))
                    .map(Arc::new);
            }
        }
        for (sink, lane, indices) in plan {
            let part = Part::new(&body, sink, indices, &mut taken);
            let sink = &self.lanes[sink];
            if sink.lanes[lane].send(part).is_err() {
                // The lane's task ended: only at shutdown, after the sources.
                tracing::error!(sink = %sink.name, "sink lane closed while sources still run");
            }
        }
        drop(dedup);
        Receipt(completion)
    }

    /// Deduplication and room activity for a body about to be dispatched
    /// (`observe`; a spool replay has had both): drops the events the other
    /// source delivered first, making a webhook's answer wait for their
    /// first copies, and shows the rest to room activity and the tap.
    /// Returns the deduplicator, still locked.
    fn observe(
        &self,
        messages: &mut Vec<Message>,
        completion: &Arc<Completion>,
        observe: bool,
    ) -> Option<std::sync::MutexGuard<'_, Deduplicator<Carrier>>> {
        if !observe {
            return None;
        }
        let mut dedup = self
            .dedup
            .as_ref()
            .map(|dedup| dedup.lock().expect("the deduplicator never panics"));
        if let Some(dedup) = dedup.as_mut() {
            let carrier = Carrier::Body(Receipt(completion.clone()));
            let originals = dedup::retain_new(dedup, messages, &carrier, Carrier::is_lost);
            // A webhook's answer says its events are safe: those dropped
            // are safe only once their first copies are.
            let after: Box<[Receipt]> = originals
                .into_iter()
                .filter_map(|original| match original {
                    Carrier::Body(receipt) if completion.source == Source::Webhook => Some(receipt),
                    _ => None,
                })
                .collect();
            if !after.is_empty() {
                let _ = completion.after.set(after);
            }
        }
        self.activity
            .lock()
            .expect("room activity never panics")
            .observe(messages.iter().map(|m| &m.event));
        if let Some(tap) = &self.tap {
            tap.publish(messages.iter());
        }
        dedup
    }

    /// The parts of a body: (sink, lane, which messages), in sink order,
    /// and how many messages each sink takes (its route may leave some out).
    /// Each part's indices are allocated once, at their exact size.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        messages: &[Message],
        sinks: Range<usize>,
    ) -> (Vec<(usize, usize, Option<Box<[u32]>>)>, Vec<usize>) {
        let hashes: Vec<u64> = messages.iter().map(|m| key_hash(m.event.key())).collect();
        let mut plan = Vec::with_capacity(sinks.len());
        let mut taken = Vec::with_capacity(sinks.len());
        let mut sizes = Vec::new();
        for sink in sinks {
            let SinkLanes { lanes, route, .. } = &self.lanes[sink];
            let count = lanes.len() as u64;
            let lane_of = |hash: &u64| (hash % count) as usize;
            let takes = |i: usize| route.takes_all() || route.takes(messages[i].event.event_type);
            sizes.clear();
            sizes.resize(lanes.len(), 0usize);
            let mut sink_takes = 0;
            for (i, hash) in hashes.iter().enumerate() {
                if takes(i) {
                    sizes[lane_of(hash)] += 1;
                    sink_takes += 1;
                }
            }
            taken.push(sink_takes);
            if sink_takes == 0 {
                continue;
            }
            // The whole body on one lane: one part of all of it.
            if sink_takes == hashes.len() {
                if let Some(lane) = sizes.iter().position(|size| *size == sink_takes) {
                    plan.push((sink, lane, None));
                    continue;
                }
            }
            for (lane, size) in sizes.iter().enumerate() {
                if *size == 0 {
                    continue;
                }
                let mut indices = Vec::with_capacity(*size);
                indices.extend(
                    (0..hashes.len() as u32)
                        .filter(|i| takes(*i as usize) && lane_of(&hashes[*i as usize]) == lane),
                );
                plan.push((sink, lane, Some(indices.into_boxed_slice())));
            }
        }
        (plan, taken)
    }
}

/// How many of `messages` need a bursty slot.
pub fn bursty_count(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.event.event_type.is_bursty())
        .count()
}

/// Drops the first `excess` bursty messages of the types `of` says,
/// keeping the latest state of each burst; counted by type.
fn shed_oldest_bursty(
    messages: &mut Vec<Message>,
    excess: usize,
    of: impl Fn(crate::core::event::EventType) -> bool,
) {
    let mut left = excess;
    messages.retain(|m| {
        if left > 0 && m.event.event_type.is_bursty() && of(m.event.event_type) {
            left -= 1;
            telemetry::shed(m.event.event_type);
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
pub(crate) mod tests {
    use super::*;
    use crate::core::event::*;

    const NO_BURSTY_LIMIT: BurstyLimit = BurstyLimit {
        max_in_flight: 100,
        when_full: WhenFull::Wait,
    };

    pub(crate) fn event(room: &str) -> Event {
        Event::room_created_for_test(room)
    }

    fn vad(room: &str) -> Event {
        Event {
            event_type: EventType::VadNotification,
            ..event(room)
        }
    }

    pub(crate) fn messages(events: Vec<Event>) -> Vec<Message> {
        events.into_iter().map(Message::new).collect()
    }

    fn types(parts: &[Part]) -> Vec<EventType> {
        parts
            .iter()
            .flat_map(|p| p.messages().map(|m| m.event.event_type))
            .collect()
    }

    #[tokio::test]
    async fn bursty_events_never_take_the_slots_of_lifecycle_events() {
        let limit = BurstyLimit {
            max_in_flight: 2,
            when_full: WhenFull::Wait,
        };
        let (fanout, mut lanes, in_flight) = Fanout::new(&[SinkSpec::all("a", 1)], 5, limit, None);
        let now = Instant::now;
        let _first = fanout
            .try_admit(messages(vec![vad("r"), vad("r")]), Source::Webhook, now())
            .unwrap();
        // The bursty slots are full: more voice activity waits...
        let refused = fanout
            .try_admit(messages(vec![vad("r"), event("r")]), Source::Webhook, now())
            .unwrap_err();
        assert_eq!(refused.reason, SubmitError::BurstyFull);
        assert_eq!(refused.body.len(), 2, "the body comes back whole");
        // ...a body that could never fit is refused as such...
        assert_eq!(
            fanout
                .try_admit(
                    messages(vec![vad("r"), vad("r"), vad("r")]),
                    Source::Webhook,
                    now()
                )
                .unwrap_err()
                .reason,
            SubmitError::TooLarge
        );
        // ...and lifecycle events still have every other slot.
        let _second = fanout
            .try_admit(
                messages(vec![event("r"), event("r"), event("r")]),
                Source::Webhook,
                now(),
            )
            .unwrap();
        assert_eq!(in_flight.current(), 5);
        let mut parts = Vec::new();
        lanes[0][0].recv_many(&mut parts, 10).await;
        assert_eq!(types(&parts).len(), 5);
        // Once the voice activity is done with, its slots come back.
        for part in &parts {
            part.acknowledge();
        }
        drop(parts);
        fanout
            .try_admit(messages(vec![vad("r"), vad("r")]), Source::Webhook, now())
            .unwrap();
    }

    #[tokio::test]
    async fn shedding_drops_the_oldest_bursty_events_and_never_lifecycle_ones() {
        let limit = BurstyLimit {
            max_in_flight: 2,
            when_full: WhenFull::Shed,
        };
        let (fanout, mut lanes, in_flight) = Fanout::new(&[SinkSpec::all("a", 1)], 10, limit, None);
        let body = vec![vad("r"), event("r"), vad("r"), vad("r")];
        let oldest = body[0].id;
        let _receipt = fanout
            .try_admit(messages(body), Source::Webhook, Instant::now())
            .unwrap();
        let mut parts = Vec::new();
        lanes[0][0].recv_many(&mut parts, 10).await;
        assert_eq!(
            types(&parts),
            [
                EventType::RoomCreated,
                EventType::VadNotification,
                EventType::VadNotification
            ]
        );
        assert!(parts[0].messages().all(|m| m.event.id != oldest));
        // The shed event's slot went back at once.
        assert_eq!(in_flight.current(), 3);
        // Full now: the next body keeps its lifecycle event and sheds the rest.
        let _receipt = fanout
            .try_admit(
                messages(vec![vad("r"), event("r")]),
                Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        let mut more = Vec::new();
        lanes[0][0].recv_many(&mut more, 10).await;
        assert_eq!(types(&more), [EventType::RoomCreated]);
    }

    #[tokio::test]
    async fn a_body_is_admitted_whole_or_not_at_all() {
        let (fanout, mut lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("a", 1)], 3, NO_BURSTY_LIMIT, None);
        let first = fanout
            .try_admit(
                messages(vec![event("r"), event("r")]),
                Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        let refused = fanout
            .try_admit(
                messages(vec![event("r"), event("r")]),
                Source::Webhook,
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(refused.reason, SubmitError::Full);
        assert_eq!(refused.body.len(), 2, "the body comes back whole");
        assert_eq!(in_flight.current(), 2);
        let part = lanes[0][0].recv().await.unwrap();
        assert_eq!(part.len(), 2, "one part for the lane");
        part.acknowledge();
        drop(part);
        first.acknowledged().await;
        assert_eq!(in_flight.current(), 0);
    }

    #[tokio::test]
    async fn each_sink_gets_only_the_events_its_route_takes() {
        let only_voice = SinkSpec {
            route: Filter::new(&["vadNotification".to_owned()], &[]).unwrap(),
            ..SinkSpec::all("voice", 1)
        };
        let (fanout, mut lanes, in_flight) = Fanout::new(
            &[SinkSpec::all("all", 1), only_voice],
            10,
            NO_BURSTY_LIMIT,
            None,
        );
        let receipt = fanout
            .try_admit(
                messages(vec![event("r"), vad("r"), event("r")]),
                Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        let all = lanes[0][0].recv().await.unwrap();
        let voice = lanes[1][0].recv().await.unwrap();
        assert_eq!(
            types(std::slice::from_ref(&all)),
            [
                EventType::RoomCreated,
                EventType::VadNotification,
                EventType::RoomCreated
            ]
        );
        assert_eq!(
            types(std::slice::from_ref(&voice)),
            [EventType::VadNotification]
        );
        all.acknowledge();
        voice.acknowledge();
        drop((all, voice));
        receipt.acknowledged().await;
        assert_eq!(in_flight.current(), 0);
        // A body no sink takes is acknowledged at once and holds no slot.
        let (fanout, _lanes, in_flight) = Fanout::new(
            &[SinkSpec {
                route: Filter::new(&["streams".to_owned()], &[]).unwrap(),
                ..SinkSpec::all("streams", 1)
            }],
            10,
            NO_BURSTY_LIMIT,
            None,
        );
        let receipt = fanout
            .try_admit(messages(vec![event("r")]), Source::Webhook, Instant::now())
            .unwrap();
        receipt.acknowledged().await;
        assert_eq!(in_flight.current(), 0);
    }

    #[tokio::test]
    async fn receipt_waits_for_every_part_of_every_sink() {
        let (fanout, mut lanes, _) = Fanout::new(
            &[SinkSpec::all("a", 2), SinkSpec::all("b", 2)],
            10,
            NO_BURSTY_LIMIT,
            None,
        );
        // Two rooms on different lanes: two parts per sink.
        let r1 = "room-0".to_owned();
        let r2 = (1..100)
            .map(|i| format!("room-{i}"))
            .find(|r| lane_of(r, 2) != lane_of(&r1, 2))
            .unwrap();
        let receipt = fanout
            .try_admit(
                messages(vec![event(&r1), event(&r2), event(&r1)]),
                Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        use futures_util::FutureExt;
        let mut parts = Vec::new();
        for sink in lanes.iter_mut() {
            for lane in sink.iter_mut() {
                parts.push(lane.recv().await.unwrap());
            }
        }
        let r1_part = parts
            .iter()
            .find(|p| p.get(0).event.key() == r1)
            .expect("a part for r1");
        assert_eq!(r1_part.len(), 2, "a room's events stay together, in order");
        for part in &parts[..3] {
            part.acknowledge();
        }
        assert!(
            receipt.acknowledged().now_or_never().is_none(),
            "one part has not been acknowledged yet"
        );
        parts[3].acknowledge();
        receipt.acknowledged().await;
    }

    /// Without a spool, a webhook whose events the notifier delivered first
    /// is acknowledged only once the notifier's copy is.
    #[tokio::test]
    async fn a_webhook_of_duplicates_waits_for_the_first_copy() {
        use futures_util::FutureExt;
        let dedup = Deduplicator::new(std::time::Duration::from_secs(60), 100);
        let (fanout, mut lanes, _) =
            Fanout::new(&[SinkSpec::all("a", 1)], 10, NO_BURSTY_LIMIT, Some(dedup));
        let first = Event {
            source: Source::Notifier,
            ..event("r")
        };
        let again = Event {
            source: Source::Webhook,
            id: event("r").id,
            ..first.clone()
        };
        let notifier = fanout
            .try_admit(messages(vec![first]), Source::Notifier, Instant::now())
            .unwrap();
        let webhook = fanout
            .try_admit(messages(vec![again]), Source::Webhook, Instant::now())
            .unwrap();
        let part = lanes[0][0].recv().await.unwrap();
        assert!(lanes[0][0].try_recv().is_err(), "the duplicate is dropped");
        assert!(!webhook.is_acknowledged());
        assert!(webhook.acknowledged().now_or_never().is_none());
        part.acknowledge();
        notifier.acknowledged().await;
        assert!(webhook.is_acknowledged());
        webhook.acknowledged().await;
    }

    /// A part keeps its whole body in memory: a sink whose route takes a
    /// few of a body's events and stalls must count all of them against
    /// its bound, or memory grows past it.
    #[tokio::test]
    async fn a_stalled_sink_with_a_narrow_route_pins_no_more_than_its_bound() {
        let only_voice = SinkSpec {
            route: Filter::new(&["vadNotification".to_owned()], &[]).unwrap(),
            ..SinkSpec::all("voice", 1)
        };
        let capacity = 20;
        let (fanout, mut lanes, _) = Fanout::new(
            &[SinkSpec::all("all", 1), only_voice],
            capacity,
            NO_BURSTY_LIMIT,
            None,
        );
        let mut stalled = Vec::new();
        for _ in 0..100 {
            let mut body = vec![vad("r")];
            body.extend((0..9).map(|_| event("r")));
            if fanout
                .try_admit(messages(body), Source::Webhook, Instant::now())
                .is_err()
            {
                break;
            }
            // The first sink keeps up; the voice sink holds what it gets.
            while let Ok(part) = lanes[0][0].try_recv() {
                part.acknowledge();
            }
            while let Ok(part) = lanes[1][0].try_recv() {
                stalled.push(part);
            }
        }
        let pinned: usize = stalled.iter().map(|p| p.body.messages.len()).sum();
        assert!(
            pinned <= capacity,
            "{pinned} events held in memory by a sink bounded to {capacity}"
        );
    }

    #[test]
    fn a_room_always_uses_one_lane() {
        assert_eq!(lane_of("room-1", 8), lane_of("room-1", 8));
        let lanes: std::collections::HashSet<usize> =
            (0..100).map(|i| lane_of(&format!("room-{i}"), 8)).collect();
        assert!(lanes.len() > 4, "keys spread over the lanes");
    }
}
