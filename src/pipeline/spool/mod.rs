//! The disk spool: where bodies wait, safe on disk, while the sinks cannot
//! take them.
//!
//! Off, the pipeline's bound on events in flight is the whole story: a full
//! pipeline answers 503. On (`spool.path`), the spool *engages* when the
//! pipeline is full or a webhook waited `spool.engage_after` for the sinks.
//! While engaged, every body from every source is appended to the log
//! (`log.rs`) instead of entering the pipeline, and a webhook is answered 2xx
//! once its body is on disk (synced, with `spool.fsync`). The replayer reads
//! the log in order and submits each body to the pipeline as room frees up,
//! so a room's events keep their order; once it has submitted everything and
//! the pipeline has room again, the spool disengages and bodies go straight
//! to the pipeline. Nothing can overtake the spool: the engaged flag is
//! checked and the body appended (or admitted) under one lock.
//!
//! Each sink reads the log on its own (`replay` runs once per sink), with
//! its own bound in fan-out, so a sink that is down or slow falls behind in
//! the log while the others keep publishing at the rate bodies arrive. Each
//! sink's cursor moves over the contiguous run of bodies it acknowledged and
//! is written to the log; the watermark, the least cursor, says which
//! segments every sink is done with, and those are deleted. The spool
//! disengages once every sink has caught up. After a crash, each sink
//! replays from its own cursor; events are rebuilt from the body with the
//! same ids (`Origin::id_seed`), so a replayed event that was already
//! published arrives again with the same id. Duplicates that deduplication
//! dropped when the body was spooled are recorded with it and stay out.

pub mod log;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::core::event::{Event, Message, Source};
use crate::core::normalize::{normalize_body, Origin};
use crate::pipeline::fanout::{Fanout, InFlight, LogWrite, Receipt};
use crate::telemetry;
use log::{Entry, Held, NewRecord, Next, Position, SegmentReader};

/// How the spool is set up (`[spool]`).
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: bool,
    /// How long the sinks may go without delivering before the spool
    /// counts them as stuck.
    pub engage_after: Duration,
    /// Failures a test arms for the log's files; none in a real run.
    pub faults: log::Faults,
    /// Whether what the notifier read in a previous run is replayed: not
    /// in a fleet that elects the notifier's holder, where another replica
    /// has held it since and published newer events of those rooms, which
    /// a late replay would put out of order.
    pub replay_notifier: bool,
}

/// Why a body could not be spooled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full (spool.max_bytes)")]
    Full,
    #[error("the spool could not write: {0}")]
    Io(String),
}

enum Command {
    Append(NewRecord, Done),
    Cursor(usize, u64),
    Watermark(u64),
    Close(oneshot::Sender<()>),
}

/// Who learns that an append is on disk, or failed.
enum Done {
    /// A spooled body's source, waiting to answer; what deduplication
    /// recorded the body as, to be told if the write fails.
    Answer(oneshot::Sender<Result<(), SpoolError>>, Option<LogWrite>),
    /// A webhook body fan-out holds, appended when the spool engaged (or
    /// ahead of a copy): its source waits to answer from disk.
    Held(oneshot::Sender<Result<(), SpoolError>>, Receipt),
    /// A copy of a body fan-out holds, from a source that waits for no
    /// answer.
    Copy(Receipt),
}

impl Done {
    /// The body is on disk as `seq`: a body fan-out holds moves each sink's
    /// cursor as soon as that sink acknowledged it, whether or not its
    /// replay still runs (at shutdown the replays stop before the lanes
    /// have drained).
    fn written(self, spool: &Arc<Spool>, seq: u64) {
        let receipt = match self {
            Done::Answer(answer, _) => {
                let _ = answer.send(Ok(()));
                return;
            }
            Done::Held(answer, receipt) => {
                let _ = answer.send(Ok(()));
                receipt
            }
            Done::Copy(receipt) => {
                receipt.durable();
                receipt
            }
        };
        if receipt.has_no_originals() {
            let spool = Arc::downgrade(spool);
            let sinks = spool.upgrade().map_or(0, |s| s.sinks.len());
            receipt.on_sink_done(
                Arc::new(move |sink| {
                    if let Some(spool) = spool.upgrade() {
                        spool.acknowledged(sink, seq);
                    }
                }),
                sinks,
            );
        }
    }

    /// The body is not on disk: what relied on it being there must not.
    fn failed(self, spool: &Spool, seed: u64, error: &SpoolError) {
        match self {
            Done::Answer(answer, write) => {
                if let Some(write) = write {
                    write.failed();
                }
                let _ = answer.send(Err(error.clone()));
            }
            Done::Held(answer, receipt) => {
                receipt.not_logged();
                spool.copies.lock().expect("never poisoned").remove(&seed);
                let _ = answer.send(Err(error.clone()));
            }
            Done::Copy(receipt) => {
                receipt.not_logged();
                spool.copies.lock().expect("never poisoned").remove(&seed);
            }
        }
    }

    fn is_copy(&self) -> bool {
        matches!(self, Done::Copy(_))
    }
}

/// What the lock guards: for each sink, how many bodies sent to the log its
/// replayer has not submitted yet, and the webhook bodies in fan-out whose
/// answer waits for the sinks. Whether the spool is engaged
/// (`Spool::engaged`) is read and changed only while it is held.
#[derive(Debug)]
pub struct Gate {
    outstanding: Vec<u64>,
    waiting: BTreeMap<u64, Waiting>,
    next_ticket: u64,
}

/// A body fan-out holds while its source waits for the answer: appended to
/// the log when the spool engages, before anything else is, so that it can
/// be answered from disk.
#[derive(Debug)]
struct Waiting {
    record: NewRecord,
    receipt: Receipt,
    /// Appended to the log, or passed over when it did not fit: never
    /// appended twice, nor later, behind a body of its room that came
    /// after it (a replay would publish that one first).
    settled: bool,
    /// When it is on disk, until its source takes it.
    spooled: Option<Durable>,
}

/// A body in the log that fan-out also holds.
#[derive(Debug)]
struct Copy {
    receipt: Receipt,
    /// Replayers that have not read it yet.
    readers: usize,
}

/// A body's place among those waiting; dropped when its source has its
/// answer.
#[derive(Debug)]
pub struct Ticket {
    spool: Arc<Spool>,
    id: u64,
}

impl Ticket {
    /// When the body is on disk, if the spool engaged and took it.
    pub fn spooled(&self) -> Option<Durable> {
        self.spool.gate().waiting.get_mut(&self.id)?.spooled.take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.spool.gate().waiting.remove(&self.id);
    }
}

/// Where one sink is in the log.
#[derive(Debug)]
struct Cursor {
    /// Every body below it is acknowledged by this sink.
    next: u64,
    /// Acknowledged bodies above `next`.
    acknowledged: BTreeSet<u64>,
    /// Below it, the sink's replayer has submitted every body.
    submitted: u64,
}

/// Each sink's cursor, and the bodies in the log some sink has not
/// acknowledged, oldest first, with running totals for the lag.
#[derive(Debug)]
struct Progress {
    cursors: Vec<Cursor>,
    /// The least cursor.
    watermark: u64,
    held: VecDeque<Counted>,
    /// Events and bytes of every body ever held, for the running totals.
    events_total: u64,
    bytes_total: u64,
}

/// A held body with the events and bytes of the held bodies before it.
#[derive(Debug, Clone, Copy)]
struct Counted {
    body: Held,
    events_before: u64,
    bytes_before: u64,
}

/// How far one sink is behind in the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Every body below it is acknowledged by the sink.
    pub cursor: u64,
    pub bodies: u64,
    pub events: u64,
    pub bytes: u64,
    /// Age of the oldest body the sink has not acknowledged.
    pub oldest: Option<Duration>,
}

impl Progress {
    /// Each sink's cursor at its start in `starts`, and the bodies
    /// `recovered` holds.
    fn recovered(starts: &[u64], recovered: &log::Recovered) -> Progress {
        let mut progress = Progress {
            cursors: starts
                .iter()
                .map(|start| Cursor {
                    next: *start,
                    acknowledged: BTreeSet::new(),
                    submitted: *start,
                })
                .collect(),
            watermark: starts.iter().copied().min().unwrap_or(recovered.watermark),
            held: VecDeque::new(),
            events_total: 0,
            bytes_total: 0,
        };
        for held in &recovered.held {
            progress.push(*held);
        }
        progress
    }

    fn push(&mut self, body: Held) {
        self.held.push_back(Counted {
            body,
            events_before: self.events_total,
            bytes_before: self.bytes_total,
        });
        // A body from a version that did not count its events counts as one.
        self.events_total += u64::from(body.events.max(1));
        self.bytes_total += body.bytes;
    }

    /// Forgets the bodies every sink acknowledged.
    fn forget_below(&mut self, seq: u64) {
        while self.held.front().is_some_and(|c| c.body.seq < seq) {
            self.held.pop_front();
        }
    }

    fn lag(&self, sink: usize, now: SystemTime) -> Lag {
        let cursor = self.cursors[sink].next;
        let from = self.held.partition_point(|c| c.body.seq < cursor);
        let Some(oldest) = self.held.get(from) else {
            return Lag {
                cursor,
                ..Lag::default()
            };
        };
        Lag {
            cursor,
            bodies: (self.held.len() - from) as u64,
            events: self.events_total - oldest.events_before,
            bytes: self.bytes_total - oldest.bytes_before,
            oldest: Some(
                now.duration_since(oldest.body.received_at)
                    .unwrap_or_default(),
            ),
        }
    }
}

pub struct Spool {
    dir: PathBuf,
    gate: Mutex<Gate>,
    to_writer: std::sync::mpsc::Sender<Command>,
    /// Bytes of the log's files, counting appends not yet written.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Notified when segments are deleted.
    space: Notify,
    durable: watch::Receiver<Position>,
    /// Whether bodies go to the log; watched by those who wait for the spool
    /// to empty.
    engaged: watch::Sender<bool>,
    /// The sinks, in fan-out's order; their cursors are written by name.
    sinks: Vec<Arc<str>>,
    /// Bodies appended when the spool engaged while fan-out held them, by
    /// id seed: a replayer waits for its sink to acknowledge the body it
    /// already has instead of sending a copy.
    copies: Mutex<HashMap<u64, Copy>>,
    /// Bytes of copies sent to the writer and not yet written.
    copies_unwritten: AtomicU64,
    progress: Mutex<Progress>,
    /// Where the replayers start: the first segment left after recovery.
    first_segment: u64,
    /// The first body this run appended: those below came from a previous run.
    first_of_this_run: u64,
    /// The sink whose replay starts furthest back: it reads every body the
    /// log holds, in order, so it counts them and shows what a previous run
    /// left to the room activity.
    observer: usize,
    engage_after: Duration,
    replay_notifier: bool,
    /// Bodies the replays acknowledged without publishing them: a previous
    /// run's notifier bodies not replayed, a body the pipeline refused or
    /// that no longer decodes (each logged and counted when it happens).
    passed_over: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

/// The most bytes of copies (`Spool::log_copy`) that wait in memory for
/// the writer: a disk that stalls must not make memory grow to the spool's
/// size.
const COPY_BACKLOG: u64 = 16 << 20;

/// Resolves once a spooled body is on disk.
pub type Durable = oneshot::Receiver<Result<(), SpoolError>>;

/// Bytes of the spool reserved for a body about to be appended.
#[derive(Debug)]
#[must_use]
pub struct Room(u64);

impl Spool {
    /// Opens (or creates) the spool in `options.dir` for `sinks`,
    /// recovering what a previous run left: each sink replays the bodies
    /// from its cursor on (a sink the log does not know yet, from the
    /// watermark).
    pub fn open(options: &Options, sinks: &[Arc<str>]) -> anyhow::Result<Arc<Spool>> {
        use anyhow::Context as _;
        let dir = &options.dir;
        let lock = lock_dir(dir)?;
        let recovered = recover(dir, sinks)?;
        let starts: Vec<u64> = sinks
            .iter()
            .map(|sink| recovered.cursors[&**sink])
            .collect();
        let outstanding: Vec<u64> = starts
            .iter()
            .map(|start| recovered.held.iter().filter(|h| h.seq >= *start).count() as u64)
            .collect();
        let writer = log::Writer::open(dir, &recovered, options.segment_bytes, options.fsync)
            .with_context(|| format!("spool.path {}: cannot write", dir.display()))?
            .with_faults(options.faults.clone());
        report_recovery(&recovered, options.max_bytes);
        telemetry::spool_bytes(writer.bytes());
        let (durable_tx, durable) = watch::channel(writer.position());
        let (to_writer, commands) = std::sync::mpsc::channel();
        let engaged = outstanding.iter().any(|n| *n > 0);
        telemetry::spool_engaged(engaged);
        let progress = Progress::recovered(&starts, &recovered);
        let spool = Arc::new(Spool {
            dir: dir.clone(),
            gate: Mutex::new(Gate {
                outstanding,
                waiting: BTreeMap::new(),
                next_ticket: 0,
            }),
            to_writer,
            bytes: AtomicU64::new(writer.bytes()),
            max_bytes: options.max_bytes,
            space: Notify::new(),
            durable,
            engaged: watch::Sender::new(engaged),
            sinks: sinks.to_vec(),
            copies: Mutex::default(),
            copies_unwritten: AtomicU64::new(0),
            progress: Mutex::new(progress),
            first_segment: recovered.segments.first().map_or(0, |s| s.id),
            first_of_this_run: recovered.next_seq,
            observer: furthest_back(&starts),
            engage_after: options.engage_after,
            replay_notifier: options.replay_notifier,
            passed_over: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        spool.start_writer(writer, commands, durable_tx, lock)?;
        // A sink that is no longer configured may have held the watermark
        // back: the segments only it needed can go now.
        let least = spool.progress.lock().expect("never poisoned").watermark;
        if least > recovered.watermark {
            let _ = spool.to_writer.send(Command::Watermark(least));
        }
        Ok(spool)
    }

    /// Starts the thread that writes the log, which keeps the spool's
    /// `lock` file locked for as long as it runs.
    fn start_writer(
        self: &Arc<Self>,
        writer: log::Writer,
        commands: std::sync::mpsc::Receiver<Command>,
        durable_tx: watch::Sender<Position>,
        lock: std::fs::File,
    ) -> std::io::Result<()> {
        let shared = self.clone();
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                // The lock file stays locked for as long as the writer runs.
                let _lock = lock;
                run_writer(writer, commands, &shared, durable_tx);
            })?;
        *self.writer.lock().expect("never poisoned") = Some(handle);
        Ok(())
    }

    /// The lock under which a source decides between the pipeline and the log.
    pub fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().expect("the spool gate never panics")
    }

    /// How long the sinks may go without delivering before they count as
    /// stuck (`spool.engage_after`).
    pub fn engage_after(&self) -> Duration {
        self.engage_after
    }

    /// Whether bodies go to the log; `_gate` shows the lock is held.
    pub fn is_engaged(&self, _gate: &Gate) -> bool {
        *self.engaged.borrow()
    }

    /// From now on, bodies go to the log until the replayers have caught
    /// up. The bodies still waiting for the sinks go first, in the order
    /// they were admitted, so that each can be answered from disk and no
    /// later body of their rooms is ahead of them in the log.
    pub fn engage(&self, gate: &mut Gate, why: &'static str) {
        if !self.engaged.send_replace(true) {
            telemetry::spool_engaged(true);
            tracing::warn!(
                why,
                "spool engaged: bodies are kept on disk until the sinks catch up"
            );
        }
        self.append_held(gate);
    }

    /// Appends the webhook bodies fan-out holds for their answer that the
    /// sinks have not all acknowledged, in the order they arrived, to be
    /// answered from disk; before anything else goes to the log, so that
    /// nothing later of their rooms is ahead of them there.
    fn append_held(&self, gate: &mut Gate) {
        let ids: Vec<u64> = gate
            .waiting
            .iter()
            .filter(|(_, w)| !w.settled && !w.receipt.is_acknowledged())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let (record, receipt) = {
                let waiting = &gate.waiting[&id];
                (waiting.record.clone(), waiting.receipt.clone())
            };
            let seed = record.id_seed;
            let appended = self
                .reserve(gate, record.entry_len(), record.source)
                .and_then(|room| {
                    // Known before a replayer can read it.
                    self.remember_copy(seed, &receipt);
                    receipt.logged();
                    let (done, durable) = oneshot::channel();
                    self.send_append(gate, room, record, Done::Held(done, receipt.clone()))?;
                    Ok(durable)
                });
            match appended {
                Ok(durable) => {
                    if let Some(waiting) = gate.waiting.get_mut(&id) {
                        waiting.settled = true;
                        waiting.spooled = Some(durable);
                    }
                }
                // Full: it and every body held after it wait for the sinks,
                // as without a spool, from now on.
                Err(_) => {
                    self.copies.lock().expect("never poisoned").remove(&seed);
                    receipt.not_logged();
                    for (_, waiting) in gate.waiting.range_mut(id..) {
                        waiting.settled = true;
                    }
                    break;
                }
            }
        }
    }

    /// Keeps `record`, a body fan-out has just admitted, until the ticket
    /// is dropped: if the spool engages meanwhile, the body is appended.
    pub fn hold(self: &Arc<Self>, gate: &mut Gate, record: NewRecord, receipt: Receipt) -> Ticket {
        let id = gate.next_ticket;
        gate.next_ticket += 1;
        gate.waiting.insert(
            id,
            Waiting {
                record,
                receipt,
                settled: false,
                spooled: None,
            },
        );
        Ticket {
            spool: self.clone(),
            id,
        }
    }

    /// Whether a body of `bytes` would fit now.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.bytes.load(Ordering::Acquire) + bytes <= self.max_bytes
    }

    /// Engages the spool from outside the gate (a webhook waited too long).
    pub fn engage_now(&self, why: &'static str) {
        let mut gate = self.gate();
        self.engage(&mut gate, why);
    }

    /// Sends `record` to the log; the answer says when it is on disk.
    pub fn append(&self, gate: &mut Gate, record: NewRecord) -> Result<Durable, SpoolError> {
        let room = self.reserve(gate, record.entry_len(), record.source)?;
        let (done, durable) = oneshot::channel();
        self.send_append(gate, room, record, Done::Answer(done, None))?;
        Ok(durable)
    }

    /// Takes `bytes` of the spool's room for a body of `source` about to be
    /// appended, so that what is done before the append (deduplication)
    /// is never undone by a full spool.
    pub fn reserve(
        &self,
        _gate: &mut Gate,
        bytes: u64,
        source: Source,
    ) -> Result<Room, SpoolError> {
        let reserved = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if reserved > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            telemetry::spool_refused(source);
            return Err(SpoolError::Full);
        }
        Ok(Room(bytes))
    }

    /// Sends `record` to the log in `room` reserved for it (at least its
    /// length; the rest goes back); `write` is told if the write fails.
    pub fn append_reserved(
        &self,
        gate: &mut Gate,
        room: Room,
        record: NewRecord,
        write: LogWrite,
    ) -> Result<Durable, SpoolError> {
        let (done, durable) = oneshot::channel();
        self.send_append(gate, room, record, Done::Answer(done, Some(write)))?;
        Ok(durable)
    }

    fn send_append(
        &self,
        gate: &mut Gate,
        room: Room,
        record: NewRecord,
        done: Done,
    ) -> Result<(), SpoolError> {
        let len = record.entry_len();
        debug_assert!(len <= room.0, "a record fits the room reserved for it");
        self.bytes
            .fetch_sub(room.0.saturating_sub(len), Ordering::AcqRel);
        if self.to_writer.send(Command::Append(record, done)).is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SpoolError::Io("the spool writer stopped".into()));
        }
        for outstanding in &mut gate.outstanding {
            *outstanding += 1;
        }
        Ok(())
    }

    /// Appends a copy of `record`, a body fan-out has just admitted with
    /// `receipt` from a source that waits for no answer (the notifier, the
    /// reconciliation), so that a crash does not lose what it had read:
    /// the replays wait for their sinks to acknowledge the body instead of
    /// sending it again, each sink's cursor moves once it has it, and after
    /// a crash each replays it from its cursor. The receipt says when the
    /// copy is durable. The webhook bodies held for their answer go first,
    /// so that the log keeps each room's order. Copies take at most half of
    /// the spool (a sink stuck on one must not leave no room for the bodies
    /// that need the spool) and wait in memory for the writer only so much
    /// (`COPY_BACKLOG`); past either, the body stays in memory alone, as
    /// without a spool.
    pub fn log_copy(&self, gate: &mut Gate, record: NewRecord, receipt: &Receipt) {
        let len = record.entry_len();
        let unwritten = self.copies_unwritten.load(Ordering::Acquire);
        if self.bytes.load(Ordering::Acquire) + len > self.max_bytes / 2
            || unwritten + len > COPY_BACKLOG
        {
            telemetry::spool_copy_skipped(record.source);
            return;
        }
        self.append_held(gate);
        let Ok(room) = self.reserve(gate, len, record.source) else {
            return;
        };
        // Known before a replayer can read it.
        let seed = record.id_seed;
        self.remember_copy(seed, receipt);
        receipt.logged();
        self.copies_unwritten.fetch_add(len, Ordering::AcqRel);
        if self
            .send_append(gate, room, record, Done::Copy(receipt.clone()))
            .is_err()
        {
            self.copies_unwritten.fetch_sub(len, Ordering::AcqRel);
            self.copies.lock().expect("never poisoned").remove(&seed);
            receipt.not_logged();
        }
    }

    fn remember_copy(&self, seed: u64, receipt: &Receipt) {
        let copy = Copy {
            receipt: receipt.clone(),
            readers: self.sinks.len(),
        };
        self.copies
            .lock()
            .expect("never poisoned")
            .insert(seed, copy);
    }

    /// Waits until the log may have room again (or a second has passed).
    pub async fn wait_for_space(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.space.notified()).await;
    }

    /// Waits until bodies go straight to the pipeline again.
    pub async fn disengaged(&self) {
        let mut engaged = self.engaged.subscribe();
        let _ = engaged.wait_for(|engaged| !engaged).await;
    }

    /// Disengages the spool if every sink caught up.
    fn disengage_if_caught_up(&self, in_flight: &InFlight) {
        // Caught up, this sink and every other: everything
        // spooled was submitted and delivered, and the sinks
        // are moving.
        // The gate first: nothing is appended or submitted
        // while this is decided.
        let gate = self.gate();
        let delivered = self
            .progress
            .lock()
            .expect("never poisoned")
            .cursors
            .iter()
            .all(|cursor| cursor.next >= cursor.submitted);
        let moving = in_flight.moving(self.engage_after);
        let submitted = gate.outstanding.iter().all(|n| *n == 0);
        if self.is_engaged(&gate) && submitted && delivered && moving {
            self.engaged.send_replace(false);
            telemetry::spool_engaged(false);
            tracing::info!("spool disengaged: the sinks caught up");
        }
    }

    /// Sink `sink` acknowledged the events of body `seq`.
    fn acknowledged(&self, sink: usize, seq: u64) {
        let mut progress = self.progress.lock().expect("never poisoned");
        let cursor = &mut progress.cursors[sink];
        if seq < cursor.next {
            return;
        }
        cursor.acknowledged.insert(seq);
        let before = cursor.next;
        while cursor.acknowledged.first() == Some(&cursor.next) {
            cursor.acknowledged.pop_first();
            cursor.next += 1;
        }
        if cursor.next == before {
            return;
        }
        let _ = self.to_writer.send(Command::Cursor(sink, cursor.next));
        self.advance_watermark(&mut progress);
    }

    /// Moves the watermark (below which segments are deleted) to the least
    /// of what every sink acknowledged and what its replay has read: a
    /// sink's cursor can run ahead of its replay over copies acknowledged
    /// from fan-out, and a replay must still read what it counts.
    fn advance_watermark(&self, progress: &mut Progress) {
        let least = progress
            .cursors
            .iter()
            .map(|c| c.next.min(c.submitted))
            .min();
        if let Some(least) = least.filter(|least| *least > progress.watermark) {
            progress.watermark = least;
            progress.forget_below(least);
            let _ = self.to_writer.send(Command::Watermark(least));
        }
    }

    /// The receipt of the body with `seed` if fan-out holds it too; each
    /// replayer asks once, the last one forgets it.
    fn copy_of(&self, seed: u64) -> Option<Receipt> {
        let mut copies = self.copies.lock().expect("never poisoned");
        let copy = copies.get_mut(&seed)?;
        copy.readers -= 1;
        let receipt = copy.receipt.clone();
        if copy.readers == 0 {
            copies.remove(&seed);
        }
        Some(receipt)
    }

    /// Bodies the replays passed over without publishing (`passed_over`).
    pub fn passed_over(&self) -> u64 {
        self.passed_over.load(Ordering::Relaxed)
    }

    /// How far each sink is behind in the spool, in fan-out's order.
    pub fn lag(&self) -> Vec<Lag> {
        let progress = self.progress.lock().expect("never poisoned");
        let now = SystemTime::now();
        (0..self.sinks.len())
            .map(|sink| progress.lag(sink, now))
            .collect()
    }

    /// Writes the last watermark and stops the writer; what is still in
    /// the log is replayed by the next run.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.to_writer.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
        let handle = self.writer.lock().expect("never poisoned").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Creates the spool's directory and locks its `lock` file, so that no
/// other bridge uses the same spool; the file stays locked while it is open.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    // The spool is on by default: say how to choose another directory,
    // or none, when the default one cannot be used.
    let hint = "set spool.path to a directory the bridge may write, or spool.enabled = false";
    std::fs::create_dir_all(dir)
        .with_context(|| format!("spool.path {}: cannot create ({hint})", dir.display()))?;
    let lock = std::fs::File::create(dir.join("lock"))
        .with_context(|| format!("spool.path {}: cannot write ({hint})", dir.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "spool.path {}: another fishjam-bridge uses this spool; give each its own",
            dir.display()
        )
    })?;
    Ok(lock)
}

/// What a previous run left in the log in `dir`, with a cursor for each of
/// `sinks` (a sink the log does not know yet starts at the watermark).
fn recover(dir: &Path, sinks: &[Arc<str>]) -> anyhow::Result<log::Recovered> {
    use anyhow::Context as _;
    let mut recovered = log::recover(dir)
        .with_context(|| format!("spool.path {}: cannot read the spool", dir.display()))?;
    // Only the sinks of this run have cursors from now on.
    recovered.cursors = sinks
        .iter()
        .map(|sink| {
            let at = recovered.cursors.get(&**sink).copied();
            (sink.to_string(), at.unwrap_or(recovered.watermark))
        })
        .collect();
    Ok(recovered)
}

/// The sink whose replay starts furthest back, of those starting at `starts`.
fn furthest_back(starts: &[u64]) -> usize {
    starts
        .iter()
        .enumerate()
        .min_by_key(|(_, start)| **start)
        .map_or(0, |(sink, _)| sink)
}

/// Logs and counts what recovery found: entries a crash tore, and bodies
/// left to replay.
fn report_recovery(recovered: &log::Recovered, max_bytes: u64) {
    if recovered.torn > 0 {
        tracing::warn!(
            torn = recovered.torn,
            "spool: entries torn by a crash were cut off (they were never acknowledged)"
        );
    }
    if recovered.pending() > 0 {
        tracing::info!(
            bodies = recovered.pending(),
            "spool: replaying bodies a previous run accepted and did not deliver"
        );
    }
    telemetry::spool_opened(max_bytes, recovered.torn);
}

/// Writes one batch of appends and tells each body's side how it went;
/// returns the bytes written. After a failure it also fails every append
/// already queued behind the batch, under the gate: those were decided
/// (what deduplication left out of them) while the failed bodies counted
/// as on their way to disk. The other commands it took off the queue
/// meanwhile are returned.
fn write_batch(
    writer: &mut log::Writer,
    records: &mut Vec<NewRecord>,
    answers: &mut Vec<Done>,
    spool: &Arc<Spool>,
    durable: &watch::Sender<Position>,
    commands: &std::sync::mpsc::Receiver<Command>,
) -> (u64, Vec<Command>) {
    let started = Instant::now();
    let batch: u64 = records.iter().map(NewRecord::entry_len).sum();
    let copies: u64 = (records.iter().zip(answers.iter()))
        .filter(|(_, done)| done.is_copy())
        .map(|(record, _)| record.entry_len())
        .sum();
    spool.copies_unwritten.fetch_sub(copies, Ordering::AcqRel);
    let first_seq = writer.next_seq();
    let error = match writer.append(records) {
        Ok(()) => {
            {
                let mut progress = spool.progress.lock().expect("never poisoned");
                for (seq, record) in (first_seq..).zip(records.iter()) {
                    progress.push(Held {
                        seq,
                        events: record.events,
                        bytes: record.entry_len(),
                        received_at: record.received_at,
                    });
                }
            }
            telemetry::spool_synced(started.elapsed());
            for record in records.iter() {
                telemetry::spool_written(record.source);
            }
            durable.send_replace(writer.position());
            for (seq, done) in (first_seq..).zip(answers.drain(..)) {
                done.written(spool, seq);
            }
            records.clear();
            return (batch, Vec::new());
        }
        Err(error) => SpoolError::Io(error.to_string()),
    };
    tracing::error!(error = %error, bodies = records.len(), "spool: append failed; the bodies are refused");
    let mut gate = spool.gate();
    let mut others = Vec::new();
    let queued =
        std::iter::from_fn(|| commands.try_recv().ok()).filter_map(|command| match command {
            Command::Append(record, done) => Some((record, done)),
            other => {
                others.push(other);
                None
            }
        });
    let in_batch = records.len();
    let failed: Vec<_> = records
        .drain(..)
        .zip(answers.drain(..))
        .chain(queued)
        .collect();
    for (index, (record, done)) in failed.into_iter().enumerate() {
        spool.bytes.fetch_sub(record.entry_len(), Ordering::AcqRel);
        // The batch's copies were counted out before the write.
        if done.is_copy() && index >= in_batch {
            spool
                .copies_unwritten
                .fetch_sub(record.entry_len(), Ordering::AcqRel);
        }
        for outstanding in &mut gate.outstanding {
            *outstanding -= 1;
        }
        telemetry::spool_failed(record.source);
        done.failed(spool, record.id_seed, &error);
    }
    drop(gate);
    (0, others)
}

fn run_writer(
    mut writer: log::Writer,
    commands: std::sync::mpsc::Receiver<Command>,
    spool: &Arc<Spool>,
    durable: watch::Sender<Position>,
) {
    let mut records = Vec::new();
    let mut answers = Vec::new();
    let mut chores = Chores {
        cursors: vec![None; spool.sinks.len()],
        watermark: None,
        close: None,
    };
    while let Ok(first) = commands.recv() {
        let mut next = Some(first);
        // Everything that queued up while the last batch was written goes
        // in one write and one sync.
        while let Some(command) = next.take() {
            match command {
                Command::Append(record, done) => {
                    records.push(record);
                    answers.push(done);
                }
                other => chores.note(other),
            }
            if records.len() < 4096 && chores.close.is_none() {
                next = commands.try_recv().ok();
            }
        }
        let before = writer.bytes();
        let mut reserved = 0;
        if !records.is_empty() {
            let (written, taken) = write_batch(
                &mut writer,
                &mut records,
                &mut answers,
                spool,
                &durable,
                &commands,
            );
            reserved = written;
            for command in taken {
                chores.note(command);
            }
        }
        chores.record(&mut writer, spool);
        count_other_bytes(spool, before, reserved, writer.bytes());
        telemetry::spool_bytes(spool.bytes.load(Ordering::Acquire));
        if let Some(done) = chores.close.take() {
            close_log(&mut writer, done);
            return;
        }
    }
}

/// What the writer does beside appending, gathered over one round: the
/// newest cursor of each sink and the newest watermark it was sent, and a
/// close.
struct Chores {
    cursors: Vec<Option<u64>>,
    watermark: Option<u64>,
    close: Option<oneshot::Sender<()>>,
}

impl Chores {
    /// Notes a command other than an append: the writer's loop takes
    /// those, and `write_batch` fails every append it takes off the queue.
    fn note(&mut self, command: Command) {
        match command {
            Command::Cursor(sink, seq) => self.cursors[sink] = Some(seq),
            Command::Watermark(seq) => self.watermark = Some(seq),
            Command::Close(done) => self.close = Some(done),
            Command::Append(..) => unreachable!("write_batch fails every queued append"),
        }
    }

    /// Records the cursors and the watermark noted in this round.
    fn record(&mut self, writer: &mut log::Writer, spool: &Spool) {
        for (sink, seq) in self.cursors.iter_mut().enumerate() {
            if let Some(seq) = seq.take() {
                if let Err(error) = writer.cursor(&spool.sinks[sink], seq) {
                    tracing::error!(error = %error, sink = %spool.sinks[sink], "spool: cannot record a sink's cursor");
                }
            }
        }
        if let Some(seq) = self.watermark.take() {
            match writer.watermark(seq) {
                Ok(freed) if freed > 0 => spool.space.notify_waiters(),
                Ok(_) => {}
                Err(error) => tracing::error!(error = %error, "spool: cannot record the watermark"),
            }
        }
    }
}

/// Counts the change in the log's bytes from `before` to `after` a round
/// that wrote `reserved` bytes of appends.
fn count_other_bytes(spool: &Spool, before: u64, reserved: u64, after: u64) {
    // The appends were counted when reserved; what else changed on disk
    // (segment heads, watermarks, deleted segments) is counted here.
    if after >= before + reserved {
        spool
            .bytes
            .fetch_add(after - before - reserved, Ordering::AcqRel);
    } else {
        spool
            .bytes
            .fetch_sub(before + reserved - after, Ordering::AcqRel);
    }
}

/// Syncs the log a last time, says what it keeps for the next run, and
/// tells `done` that the writer stops.
fn close_log(writer: &mut log::Writer, done: oneshot::Sender<()>) {
    match writer.sync() {
        Ok(()) if writer.pending() > 0 => tracing::info!(
            bodies = writer.pending(),
            "spool closed; it keeps bodies the sinks have not acknowledged for the next run"
        ),
        Ok(()) => tracing::info!("spool closed, empty"),
        Err(error) => tracing::error!(error = %error, "spool: final sync failed"),
    }
    let _ = done.send(());
}

/// Reads the log for sink `sink` from its cursor and submits each body to
/// that sink in order, until `shutdown`. What it had not submitted by then
/// stays in the log for the next run. Each sink has its own, so one that
/// is slow holds back no other.
pub async fn replay(
    spool: Arc<Spool>,
    sink: usize,
    fanout: Fanout,
    in_flight: InFlight,
    fishjam_id: Arc<str>,
    shutdown: CancellationToken,
) {
    let replay = Replay {
        spool: &spool,
        sink,
        fanout: &fanout,
        fishjam_id: &fishjam_id,
        in_flight: &in_flight,
        shutdown: &shutdown,
    };
    replay.run().await;
}

/// What a replay found where its next segment should be.
enum Opened {
    /// The segment, to read.
    Segment(SegmentReader),
    /// Nothing to read there now: the segment was deleted (the next one
    /// is tried), or could not be opened (tried again after a pause).
    Again,
    /// Shutdown came first.
    Stopped,
}

/// Waits a second before a replay tries again; `Break` at shutdown.
async fn pause(shutdown: &CancellationToken) -> ControlFlow<()> {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => ControlFlow::Continue(()),
        () = shutdown.cancelled() => ControlFlow::Break(()),
    }
}

fn segment_len(dir: &Path, segment: u64) -> u64 {
    std::fs::metadata(log::segment_path(dir, segment)).map_or(0, |m| m.len())
}

/// One sink's replayer: what it reads the log and submits with.
struct Replay<'a> {
    spool: &'a Arc<Spool>,
    sink: usize,
    fanout: &'a Fanout,
    fishjam_id: &'a Arc<str>,
    in_flight: &'a InFlight,
    shutdown: &'a CancellationToken,
}

impl Replay<'_> {
    /// The replay's loop: reads each segment in turn, as far as it is
    /// durable, and hands the sink each body it has not had.
    async fn run(&self) {
        let spool = self.spool;
        let mut durable = spool.durable.clone();
        let mut segment = spool.first_segment;
        // The open segment and, once it is closed, its length.
        let mut reader: Option<(SegmentReader, Option<u64>)> = None;
        // Where this run's replay starts: the cursor at open. The cursor itself
        // may have moved on since, over copies the sink acknowledged from
        // fan-out; those are still read here, to count them submitted.
        let mut expected =
            spool.progress.lock().expect("never poisoned").cursors[self.sink].submitted;
        loop {
            let end = *durable.borrow_and_update();
            if reader.is_none() {
                match self.open(&mut segment, end).await {
                    Opened::Segment(opened) => reader = Some((opened, None)),
                    Opened::Again => continue,
                    Opened::Stopped => return,
                }
            }
            let (current, closed_len) = reader.as_mut().expect("opened above");
            // A closed segment is read to its end; the one being written only
            // as far as it is durable.
            let limit = if segment < end.segment {
                *closed_len.get_or_insert_with(|| segment_len(&spool.dir, segment))
            } else {
                end.offset
            };
            let step = match current.next(limit) {
                Ok(Next::Entry(Entry::Body(record))) if record.seq >= expected => {
                    self.take(record, &mut expected).await
                }
                Ok(Next::Entry(_) | Next::Unreadable) => ControlFlow::Continue(()),
                Ok(next @ (Next::End | Next::Torn { .. })) if segment < end.segment => {
                    if let Next::Torn { offset } = next {
                        tracing::error!(
                            segment,
                            offset,
                            "spool: a torn entry inside the log; the rest of its segment is skipped"
                        );
                    }
                    segment += 1;
                    reader = None;
                    ControlFlow::Continue(())
                }
                Ok(Next::End | Next::Torn { .. }) => self.wait_for_more(&mut durable).await,
                Err(error) => {
                    tracing::error!(error = %error, segment, "spool: cannot read the log; trying again");
                    reader = None;
                    pause(self.shutdown).await
                }
            };
            if step.is_break() {
                return;
            }
        }
    }

    /// Opens `segment`, the next the replay reads, moving past it when it
    /// was deleted before `end`.
    async fn open(&self, segment: &mut u64, end: Position) -> Opened {
        match SegmentReader::open(&log::segment_path(&self.spool.dir, *segment), 0) {
            Ok(opened) => Opened::Segment(opened),
            // Deleted once all its bodies were acknowledged.
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound && *segment < end.segment =>
            {
                *segment += 1;
                Opened::Again
            }
            Err(error) => {
                let segment = *segment;
                tracing::error!(error = %error, segment, "spool: cannot open a segment; trying again");
                match pause(self.shutdown).await {
                    ControlFlow::Continue(()) => Opened::Again,
                    ControlFlow::Break(()) => Opened::Stopped,
                }
            }
        }
    }

    /// Hands the sink `record`, the next body in the log (`expected` is
    /// where it was expected): submitted, or, when fan-out holds it
    /// already, waited for until the sink acknowledged it. `Break` at
    /// shutdown.
    async fn take(&self, record: log::Record, expected: &mut u64) -> ControlFlow<()> {
        let (spool, sink) = (self.spool, self.sink);
        // Bodies lost to a torn segment are no longer waited for.
        for missing in *expected..record.seq {
            spool.acknowledged(sink, missing);
        }
        *expected = record.seq + 1;
        let seq = record.seq;
        let copy = spool.copy_of(record.id_seed);
        match copy.as_ref().map(|receipt| receipt.acknowledged_by(sink)) {
            // Fan-out holds this body for the sink already: it is
            // acknowledged when the sink has that, not sent twice.
            Some(acknowledged) => {
                if sink == spool.observer {
                    telemetry::spool_replayed(record.source);
                }
                tokio::select! {
                    () = acknowledged => spool.acknowledged(sink, seq),
                    () = self.shutdown.cancelled() => return ControlFlow::Break(()),
                }
            }
            None => {
                let submitted = tokio::select! {
                    submitted = self.submit(record) => submitted,
                    () = self.shutdown.cancelled() => return ControlFlow::Break(()),
                };
                if !submitted {
                    if sink == spool.observer {
                        spool.passed_over.fetch_add(1, Ordering::Relaxed);
                    }
                    spool.acknowledged(sink, seq);
                }
            }
        }
        {
            let mut progress = spool.progress.lock().expect("never poisoned");
            progress.cursors[sink].submitted = *expected;
            spool.advance_watermark(&mut progress);
        }
        spool.gate().outstanding[sink] -= 1;
        ControlFlow::Continue(())
    }

    /// At the end of what is durable: disengages the spool if every sink
    /// caught up, then waits until more is durable. `Break` at shutdown.
    async fn wait_for_more(&self, durable: &mut watch::Receiver<Position>) -> ControlFlow<()> {
        self.spool.disengage_if_caught_up(self.in_flight);
        let engaged = *self.spool.engaged.borrow();
        tokio::select! {
            _ = durable.changed() => {}
            // Engaged with nothing to read: the pipeline is draining.
            () = tokio::time::sleep(Duration::from_millis(50)), if engaged => {}
            () = self.shutdown.cancelled() => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    /// Rebuilds a body's events (without the duplicates dropped when it was
    /// spooled) and waits until the sink takes them; the body is
    /// acknowledged in the sink's cursor once it has them. False when there
    /// is nothing to submit.
    async fn submit(&self, record: log::Record) -> bool {
        let earlier_run = record.seq < self.spool.first_of_this_run;
        if earlier_run && record.source != Source::Webhook && !self.spool.replay_notifier {
            if self.sink == self.spool.observer {
                telemetry::spool_not_replayed(record.source);
            }
            return false;
        }
        let Some(messages) = self.rebuild(&record) else {
            return false;
        };
        let seq = record.seq;
        if self.sink == self.spool.observer {
            telemetry::spool_replayed(record.source);
            // This run has not seen what a previous one spooled.
            if seq < self.spool.first_of_this_run {
                self.fanout.observe_recovered(&messages);
            }
        }
        self.admit_in_parts(messages, record.source, seq).await
    }

    /// The messages of a spooled body, without the duplicates dropped when
    /// it was spooled; None when it no longer decodes.
    fn rebuild(&self, record: &log::Record) -> Option<Vec<Message>> {
        let origin = Origin {
            source: record.source,
            received_at: record.received_at,
            fishjam_id: self.fishjam_id.clone(),
            id_seed: record.id_seed,
        };
        let events = match normalize_body(&record.body, &origin) {
            Ok(normalized) => normalized.events,
            Err(error) => {
                // It decoded when it was spooled and its CRC holds: a bug.
                tracing::error!(error = %error, seq = record.seq, "spool: a spooled body no longer decodes; dropped");
                return None;
            }
        };
        Some(Message::all(without_skips(events, record)))
    }

    /// Admits `messages`, body `seq` from `source`, to the sink, waiting
    /// for room; false when the pipeline refused them.
    async fn admit_in_parts(&self, messages: Vec<Message>, source: Source, seq: u64) -> bool {
        // A body spooled under a larger bound than this run's goes in
        // parts, in order; it is acknowledged when the last part is.
        let size = self.fanout.largest_submission().max(1);
        let mut parts: Vec<Vec<_>> = Vec::new();
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() || parts.is_empty() {
            parts.push(messages.by_ref().take(size).collect());
        }
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(parts.len()));
        for part in parts {
            let on_acknowledged = {
                let (spool, remaining, sink) = (self.spool.clone(), remaining.clone(), self.sink);
                Box::new(move || {
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        spool.acknowledged(sink, seq);
                    }
                })
            };
            if let Err(refused) = self
                .fanout
                .admit_to(self.sink, part, source, Some(on_acknowledged))
                .await
            {
                tracing::error!(error = %refused.reason, seq, "spool: the pipeline refused a spooled body");
                return false;
            }
        }
        true
    }
}

/// `events`, rebuilt from `record`, without those its skips name.
fn without_skips(events: Vec<Event>, record: &log::Record) -> Vec<Event> {
    let seq = record.seq;
    // Skips name events by position: a body that no longer normalizes
    // to as many events as when it was spooled keeps them all.
    let counted = record.events as usize;
    let skips: &[u32] = if counted != 0 && counted != events.len() {
        tracing::warn!(
            seq,
            spooled = counted,
            now = events.len(),
            "spool: a body normalizes to another number of events than when it was spooled; its duplicates are kept"
        );
        &[]
    } else {
        &record.skips
    };
    let mut skips = skips.iter().peekable();
    events
        .into_iter()
        .enumerate()
        .filter(|(i, _)| {
            let skip = skips.peek() == Some(&&(*i as u32));
            if skip {
                skips.next();
            }
            !skip
        })
        .map(|(_, event)| event)
        .collect()
}

/// A body ready for the log, from what a source received.
pub fn record(origin: &Origin, body: bytes::Bytes) -> NewRecord {
    NewRecord {
        source: origin.source,
        received_at: origin.received_at,
        id_seed: origin.id_seed,
        events: 0,
        skips: Box::default(),
        body,
    }
}

/// A small spool in `dir` for tests: 1 MiB, segments of 256 bytes, synced.
#[cfg(test)]
pub(crate) fn test_options(dir: &Path) -> Options {
    Options {
        dir: dir.to_owned(),
        max_bytes: 1 << 20,
        segment_bytes: 256,
        fsync: true,
        engage_after: Duration::from_secs(1),
        faults: log::Faults::default(),
        replay_notifier: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_bridge_cannot_use_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let error = Spool::open(&test_options(dir.path()), &[Arc::from("a")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("another fishjam-bridge uses this spool"),
            "{error}"
        );
    }

    fn record(n: u8) -> NewRecord {
        NewRecord {
            source: crate::core::event::Source::Webhook,
            received_at: SystemTime::now(),
            id_seed: u64::from(n),
            events: 1,
            skips: Box::default(),
            body: bytes::Bytes::from(vec![n]),
        }
    }

    /// The id seeds of the bodies in the log in `dir`, in log order.
    fn logged_seeds(dir: &Path) -> Vec<u64> {
        let mut seeds = Vec::new();
        for segment in log::segment_ids(dir).unwrap() {
            let mut reader = SegmentReader::open(&log::segment_path(dir, segment), 0).unwrap();
            while let Next::Entry(entry) = reader.next(segment_len(dir, segment)).unwrap() {
                if let Entry::Body(record) = entry {
                    seeds.push(record.id_seed);
                }
            }
        }
        seeds
    }

    /// A body fan-out holds for a webhook that did not fit the spool when
    /// it engaged must never be appended later, behind a body of its room
    /// that arrived after it: a replay after a crash would publish the
    /// later one first.
    #[tokio::test]
    async fn a_held_body_that_did_not_fit_is_never_appended_behind_a_later_body() {
        use crate::pipeline::fanout::tests::{event, messages};
        use crate::pipeline::fanout::{BurstyLimit, SinkSpec, WhenFull};
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let limit = BurstyLimit {
            max_in_flight: 10,
            when_full: WhenFull::Wait,
        };
        let (fanout, _lanes, _) = Fanout::new(&[SinkSpec::all("a", 1)], 10, limit, None);
        let receipt = fanout
            .try_admit(
                messages(vec![event("r1")]),
                crate::core::event::Source::Webhook,
                Instant::now(),
            )
            .unwrap();
        let ticket = spool.hold(&mut spool.gate(), record(1), receipt);
        // The spool is full when it engages: the held body waits for the
        // sinks, as without a spool.
        let free = spool.bytes.swap(spool.max_bytes, Ordering::AcqRel);
        spool.engage_now("test");
        assert!(ticket.spooled().is_none(), "no room for it");
        spool.bytes.store(free, Ordering::Release);
        // A later body of its room is spooled, then the spool engages again.
        let later = spool.append(&mut spool.gate(), record(2)).unwrap();
        later.await.unwrap().unwrap();
        spool.engage_now("again");
        if let Some(durable) = ticket.spooled() {
            durable.await.unwrap().unwrap();
        }
        spool.close().await;
        let seeds = logged_seeds(dir.path());
        assert!(
            seeds.iter().position(|s| *s == 1) < seeds.iter().position(|s| *s == 2),
            "the held body is in the log behind the later one: {seeds:?}"
        );
    }

    /// Held webhook bodies appended when the spool engages are replayed to
    /// no sink that fan-out already gave them to, however many sinks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_body_reaches_each_of_six_sinks_once() {
        use crate::core::proto::{server_message::RoomCreated, Content, ServerMessage};
        use crate::pipeline::fanout::{BurstyLimit, SinkSpec, WhenFull};
        use prost::Message as _;
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<Arc<str>> = (0..6).map(|n| Arc::from(format!("s{n}"))).collect();
        let spool = Spool::open(&test_options(dir.path()), &names).unwrap();
        let limit = BurstyLimit {
            max_in_flight: 10,
            when_full: WhenFull::Wait,
        };
        let specs: Vec<_> = names.iter().map(|n| SinkSpec::all(n, 1)).collect();
        let (fanout, lanes, in_flight) = Fanout::new(&specs, 10, limit, None);
        let bytes = ServerMessage {
            content: Some(Content::RoomCreated(RoomCreated {
                room_id: "r1".to_owned(),
            })),
        }
        .encode_to_vec();
        let origin = Origin::now(crate::core::event::Source::Webhook, Arc::from("test"));
        let events = normalize_body(&bytes, &origin).unwrap().events;
        let held_id = events[0].id;
        let receipt = fanout
            .try_admit(Message::all(events), origin.source, Instant::now())
            .unwrap();
        let held = super::record(&origin, bytes.into());
        let ticket = spool.hold(&mut spool.gate(), held, receipt.clone());
        spool.engage_now("test");
        ticket.spooled().expect("spooled").await.unwrap().unwrap();
        let shutdown = CancellationToken::new();
        let replays: Vec<_> = (0..names.len())
            .map(|sink| {
                tokio::spawn(replay(
                    spool.clone(),
                    sink,
                    fanout.clone(),
                    in_flight.clone(),
                    Arc::from("test"),
                    shutdown.clone(),
                ))
            })
            .collect();
        // Every sink acknowledges what it is given, until the spool is
        // done with the held body.
        let mut seen = vec![0; names.len()];
        let mut lanes: Vec<_> = lanes.into_iter().map(|mut l| l.pop().unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(receipt.is_acknowledged() && spool.lag().iter().all(|l| l.cursor == 1)) {
            assert!(Instant::now() < deadline, "the held body is acknowledged");
            for (sink, lane) in lanes.iter_mut().enumerate() {
                while let Ok(part) = lane.try_recv() {
                    part.acknowledge();
                    seen[sink] += part.messages().filter(|m| m.event.id == held_id).count();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What a replay may still have sent arrives before its cursor moves.
        for (sink, lane) in lanes.iter_mut().enumerate() {
            while let Ok(part) = lane.try_recv() {
                part.acknowledge();
                seen[sink] += part.messages().filter(|m| m.event.id == held_id).count();
            }
        }
        assert_eq!(seen, [1; 6], "each sink gets the held body once");
        shutdown.cancel();
        for task in replays {
            task.await.unwrap();
        }
        drop(ticket);
    }

    #[tokio::test]
    async fn each_sink_resumes_from_its_own_cursor_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = [Arc::from("fast"), Arc::from("slow")];
        let spool = Spool::open(&test_options(dir.path()), &sinks).unwrap();
        for n in 0..5 {
            let durable = spool.append(&mut spool.gate(), record(n)).unwrap();
            durable.await.unwrap().unwrap();
        }
        // Both replays read every body (what lets the watermark pass
        // them); the fast sink has every body, the slow one the first two.
        for cursor in &mut spool.progress.lock().unwrap().cursors {
            cursor.submitted = 5;
        }
        for seq in 0..5 {
            spool.acknowledged(0, seq);
        }
        spool.acknowledged(1, 1);
        spool.acknowledged(1, 0);
        let lag = spool.lag();
        assert_eq!((lag[0].cursor, lag[0].bodies), (5, 0));
        assert_eq!((lag[1].cursor, lag[1].bodies, lag[1].events), (2, 3, 3));
        assert!(lag[1].bytes > 0 && lag[1].oldest.is_some());
        spool.close().await;
        drop(spool);

        // Reopened, each sink starts where it was; a sink the log does not
        // know starts at the watermark, and one no longer configured is
        // forgotten.
        let sinks = [Arc::from("slow"), Arc::from("fast"), Arc::from("new")];
        let spool = Spool::open(&test_options(dir.path()), &sinks).unwrap();
        let lag = spool.lag();
        assert_eq!(lag[0].cursor, 2, "slow");
        assert_eq!(lag[1].cursor, 5, "fast");
        assert_eq!(lag[2].cursor, 2, "new, from the watermark");
        assert_eq!(spool.gate().outstanding, [3, 0, 3]);
        assert!(spool.is_engaged(&spool.gate()), "bodies wait for replay");
        spool.close().await;
        let recovered = log::recover(dir.path()).unwrap();
        assert_eq!(recovered.watermark, 2);
        assert_eq!(recovered.held.len(), 3);
    }
}
