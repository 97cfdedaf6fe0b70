//! The lane loop: the heart of at-least-once delivery. One task per lane of
//! each sink takes the parts fan-out sends it, publishes their messages in
//! batches and acknowledges each part once every message of it is safe.
//!
//! A sink never decides what is retried: it reports how many messages of a
//! batch are safe and why the rest are not, and the lane retries from the
//! first unacknowledged message with backoff, forever, so an accepted event
//! is never dropped here and a room's events never overtake each other. A
//! message the broker refuses for good (`SinkError::Rejected`) becomes a
//! dead letter, and the lane goes on after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::event::Message;
use crate::net::backoff::Backoff;
use crate::pipeline::dead_letter::DeadLetters;
use crate::pipeline::fanout::{LaneReceiver, Part, SinkProgress};
use crate::sinks::{Publish, PublishError, SinkError};
use crate::telemetry;

/// How a lane batches and retries.
#[derive(Debug, Clone)]
pub struct LaneOptions {
    pub max_batch: usize,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub dead_letters: DeadLetters,
}

/// Drives one lane of one sink until fan-out closes it and it is empty.
pub async fn run_lane<S: Publish>(
    sink: Arc<S>,
    mut lane: LaneReceiver,
    options: LaneOptions,
    progress: SinkProgress,
) {
    let metrics = telemetry::SinkMetrics::new(sink.name());
    let mut parts = Vec::new();
    // Kept from one delivery to the next for their room.
    let mut scratch = Scratch::default();
    // Parts are received a few at a time: a part can hold a whole body.
    let receive = options.max_batch.max(1);
    while lane.recv_many(&mut parts, receive).await > 0 {
        // A lane that was idle starts its clock here: what the sink holds
        // is late from now on, not from its last delivery long ago.
        progress.took_work();
        let count: usize = parts.iter().map(Part::len).sum();
        metrics.queued(-(count as f64));
        deliver(&*sink, &parts, &options, &metrics, &mut scratch).await;
        // Dropping the parts frees their slots in this sink's bound.
        parts.clear();
        progress.progressed();
    }
}

/// What one delivery keeps track of, reused from one to the next.
#[derive(Default)]
struct Scratch {
    /// Which messages are safe.
    done: Vec<bool>,
    /// The part each message belongs to.
    part_of: Vec<u32>,
    /// Each part's messages not yet safe.
    left: Vec<u32>,
    /// The messages of the next batch, by index.
    batch: Vec<usize>,
    /// The rooms seen while choosing a batch.
    rooms: foldhash::HashSet<u64>,
}

/// The messages of one delivery and which of them are safe; acknowledges
/// each part once all of its messages are.
struct Delivery<'a> {
    parts: &'a [Part],
    messages: Vec<&'a Message>,
    scratch: &'a mut Scratch,
    /// Every message before it is safe.
    first: usize,
    remaining: usize,
}

impl<'a> Delivery<'a> {
    fn new(parts: &'a [Part], scratch: &'a mut Scratch) -> Delivery<'a> {
        let mut messages: Vec<&Message> = Vec::with_capacity(parts.iter().map(Part::len).sum());
        messages.extend(parts.iter().flat_map(Part::messages));
        scratch.done.clear();
        scratch.done.resize(messages.len(), false);
        scratch.part_of.clear();
        scratch.left.clear();
        for (index, part) in parts.iter().enumerate() {
            scratch
                .part_of
                .extend(std::iter::repeat_n(index as u32, part.len()));
            scratch.left.push(part.len() as u32);
        }
        let remaining = messages.len();
        let delivery = Delivery {
            parts,
            messages,
            scratch,
            first: 0,
            remaining,
        };
        // A part with no message is done already.
        for (index, part) in parts.iter().enumerate() {
            if delivery.scratch.left[index] == 0 {
                part.acknowledge();
            }
        }
        delivery
    }

    fn safe(&mut self, message: usize) {
        if std::mem::replace(&mut self.scratch.done[message], true) {
            return;
        }
        self.remaining -= 1;
        let part = self.scratch.part_of[message] as usize;
        self.scratch.left[part] -= 1;
        if self.scratch.left[part] == 0 {
            self.parts[part].acknowledge();
        }
        while self.scratch.done.get(self.first) == Some(&true) {
            self.first += 1;
        }
    }

    /// Marks safe what the sink took of the batch just sent: its first
    /// `acknowledged`, and where the sink answers each message on its own,
    /// the others of the wave it took (each the first message not yet safe
    /// of its room, so its room moves on). Returns how many from the start
    /// it took, and how many in all.
    fn settle(
        &mut self,
        failure: Option<&PublishError>,
        sent: usize,
        prefix: bool,
    ) -> (usize, usize) {
        let acknowledged = failure.map_or(sent, |f| f.acknowledged.min(sent));
        for n in 0..acknowledged {
            let message = self.scratch.batch[n];
            self.safe(message);
        }
        let also: &[usize] = match failure {
            Some(failure) if !prefix => &failure.also_acknowledged,
            _ => &[],
        };
        let mut taken = acknowledged;
        for &n in also.iter().filter(|&&n| n > acknowledged && n < sent) {
            let message = self.scratch.batch[n];
            self.safe(message);
            taken += 1;
        }
        (acknowledged, taken)
    }

    /// Chooses the next batch into `scratch.batch`: the next `max_batch`
    /// messages in order where the sink stores what it took of a failed
    /// batch as a prefix; otherwise the first message not yet safe of each
    /// room, in order, so that no room ever has two unacknowledged at once
    /// and rooms do not wait for each other.
    fn choose(&mut self, max_batch: usize, prefix: bool) {
        use std::hash::BuildHasher;
        let Scratch {
            done, batch, rooms, ..
        } = &mut *self.scratch;
        batch.clear();
        if prefix {
            let last = self
                .messages
                .len()
                .min(self.first.saturating_add(max_batch));
            batch.extend((self.first..last).filter(|&i| !done[i]));
            return;
        }
        rooms.clear();
        let hasher = foldhash::fast::FixedState::default();
        // Looked at no further than this: a room with many messages in a
        // row must not make each batch scan all of them.
        let last =
            (self.messages.len()).min(self.first.saturating_add(max_batch.saturating_mul(8)));
        let waiting = (self.first..last).zip(&done[self.first..last]);
        for (index, _) in waiting.filter(|(_, done)| !**done) {
            let room = hasher.hash_one(self.messages[index].event.key());
            if rooms.insert(room) {
                batch.push(index);
                if batch.len() == max_batch {
                    break;
                }
            }
        }
    }
}

/// Publishes the messages of `parts` in batches of at most `max_batch`
/// until every one is acknowledged, acknowledging each part as soon as all
/// of its messages are. A failure retries from the first unacknowledged
/// message of each room; messages after it may be published again (same
/// id), never before it.
async fn deliver<S: Publish>(
    sink: &S,
    parts: &[Part],
    options: &LaneOptions,
    metrics: &telemetry::SinkMetrics,
    scratch: &mut Scratch,
) {
    let mut delivery = Delivery::new(parts, scratch);
    let mut backoff = Backoff::new(options.retry_initial_backoff, options.retry_max_backoff);
    let max_batch = options.max_batch.max(1);
    let prefix = sink.stores_prefixes();
    // A wave's messages are not side by side; a prefix is published as the
    // slice it is.
    let mut wave: Vec<&Message> = Vec::new();
    while delivery.remaining > 0 {
        delivery.choose(max_batch, prefix);
        let chosen = &delivery.scratch.batch;
        let batch: &[&Message] = match (prefix, chosen.first(), chosen.last()) {
            (true, Some(&first), Some(&last)) => &delivery.messages[first..=last],
            _ => {
                wave.clear();
                wave.extend(chosen.iter().map(|&i| delivery.messages[i]));
                &wave
            }
        };
        let started = Instant::now();
        let sent = batch.len();
        let failure = sink.publish(batch).await.err();
        let (acknowledged, taken) = delivery.settle(failure.as_ref(), sent, prefix);
        if taken > 0 {
            metrics.published(taken, started.elapsed());
        }
        let Some(failure) = failure else {
            backoff = Backoff::new(options.retry_initial_backoff, options.retry_max_backoff);
            continue;
        };
        let PublishError {
            error, retry_after, ..
        } = failure;
        let refused = delivery.scratch.batch.get(acknowledged).copied();
        if let (SinkError::Rejected(reason), Some(refused)) = (&error, refused) {
            if dead_letter(sink, options, reason, delivery.messages[refused]).await {
                // Kept: done with it, and on with its room; not before a
                // pause another message's failure asked for.
                delivery.safe(refused);
                if let Some(pause) = retry_after {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        }
        telemetry::sink_failed(sink.name(), error.reason(), sent - taken);
        telemetry::sink_retry(sink.name());
        // A destination's own `Retry-After` is the least it waits.
        let delay = backoff.next_delay().max(retry_after.unwrap_or_default());
        tracing::warn!(
            sink = sink.name(),
            error = %telemetry::Chain(&error),
            attempt = backoff.attempts(),
            delay_ms = delay.as_millis() as u64,
            pending = delivery.remaining,
            "publish failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Keeps `message`, which the sink refused for good, as a dead letter;
/// false when it cannot be kept (then it is retried).
async fn dead_letter<S: Publish>(
    sink: &S,
    options: &LaneOptions,
    reason: &str,
    message: &Message,
) -> bool {
    telemetry::sink_failed(sink.name(), "rejected", 1);
    match options
        .dead_letters
        .store(sink.name(), reason, message)
        .await
    {
        Ok(()) => true,
        Err(failure) => {
            tracing::error!(
                sink = sink.name(),
                error = %telemetry::Chain(&failure),
                "cannot write a dead letter; the event is retried"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Event;
    use crate::pipeline::fanout::tests::{event, messages};
    use crate::pipeline::fanout::{BurstyLimit, Fanout, SinkSpec, WhenFull};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// What the fake sink does with its next publish call.
    #[derive(Debug, Clone)]
    enum Answer {
        /// Takes the whole batch.
        All,
        /// Takes this many from the start, then fails with the error.
        Fail(usize, fn() -> SinkError),
        /// Waits until the test releases it, then takes the whole batch.
        Stall,
        /// Stores the batch's message at this index, then fails the whole
        /// batch: a JetStream stream that stored a later message whose ack
        /// was lost while an earlier one was not stored.
        StoreOnly(usize),
        /// Fails the first message and takes, and says it took, the rest:
        /// a broker that answers each message on its own.
        FailFirst,
    }

    /// A sink that answers from a script (then takes everything) and
    /// records what it holds.
    struct FakeSink {
        script: Mutex<VecDeque<Answer>>,
        release: tokio::sync::Semaphore,
        /// Every batch it was given, as room keys.
        calls: Mutex<Vec<Vec<String>>>,
        /// What it acknowledged, in order.
        stored: Mutex<Vec<Event>>,
    }

    impl FakeSink {
        fn answering(answers: impl IntoIterator<Item = Answer>) -> Arc<FakeSink> {
            Arc::new(FakeSink {
                script: Mutex::new(answers.into_iter().collect()),
                release: tokio::sync::Semaphore::new(0),
                calls: Mutex::default(),
                stored: Mutex::default(),
            })
        }

        /// Keeps `messages`, dropping an id it holds already, as
        /// JetStream's `Nats-Msg-Id` window does.
        fn store<'a>(&self, messages: impl Iterator<Item = &'a Message>) {
            let mut stored = self.stored.lock().unwrap();
            for message in messages {
                if stored.iter().all(|e| e.id != message.event.id) {
                    stored.push(message.event.clone());
                }
            }
        }

        fn stored_keys(&self) -> Vec<String> {
            self.stored
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.key().to_owned())
                .collect()
        }
    }

    impl Publish for FakeSink {
        fn name(&self) -> &str {
            "fake"
        }

        async fn publish(&self, batch: &[&Message]) -> Result<(), PublishError> {
            self.calls
                .lock()
                .unwrap()
                .push(batch.iter().map(|m| m.event.key().to_owned()).collect());
            let answer = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::All);
            let (taken, error) = match answer {
                Answer::StoreOnly(n) => {
                    self.store(batch.get(n).into_iter().copied());
                    return Err(PublishError::new(0, SinkError::Timeout));
                }
                Answer::All => (batch.len(), None),
                Answer::Stall => {
                    self.release.acquire().await.unwrap().forget();
                    (batch.len(), None)
                }
                Answer::Fail(n, error) => (n.min(batch.len()), Some(error())),
                Answer::FailFirst => {
                    let mut settlement = crate::sinks::Settlement::default();
                    settlement.record(Err(SinkError::Timeout));
                    for _ in 1..batch.len() {
                        settlement.record(Ok(()));
                    }
                    self.store(batch[1..].iter().copied());
                    return settlement.finish();
                }
            };
            self.store(batch[..taken].iter().copied());
            match error {
                None => Ok(()),
                Some(error) => Err(PublishError::new(taken, error)),
            }
        }
    }

    fn options(max_batch: usize, dead_letters: DeadLetters) -> LaneOptions {
        LaneOptions {
            max_batch,
            retry_initial_backoff: Duration::from_millis(1),
            retry_max_backoff: Duration::from_millis(2),
            dead_letters,
        }
    }

    const LIMIT: BurstyLimit = BurstyLimit {
        max_in_flight: 100,
        when_full: WhenFull::Wait,
    };

    /// Events of rooms `keys`, admitted as one body each, into a single lane.
    async fn admitted(
        fanout: &Fanout,
        bodies: &[&[&str]],
    ) -> Vec<crate::pipeline::fanout::Receipt> {
        let mut receipts = Vec::new();
        for keys in bodies {
            let events = keys.iter().map(|k| event(k)).collect();
            receipts.push(
                fanout
                    .admit(
                        messages(events),
                        crate::core::event::Source::Webhook,
                        Instant::now(),
                        None,
                    )
                    .await
                    .unwrap(),
            );
        }
        receipts
    }

    async fn run(sink: Arc<FakeSink>, bodies: &[&[&str]], max_batch: usize, dead: DeadLetters) {
        let (fanout, mut lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("fake", 1)], 100, LIMIT, None);
        let receipts = admitted(&fanout, bodies).await;
        drop(fanout);
        let lane = lanes.pop().unwrap().pop().unwrap();
        run_lane(sink, lane, options(max_batch, dead), in_flight.sink(0)).await;
        for receipt in receipts {
            receipt.acknowledged().await;
        }
        assert_eq!(in_flight.current(), 0, "every slot came back");
    }

    #[tokio::test]
    async fn a_failure_retries_from_the_first_unacknowledged_event_in_order() {
        let sink = FakeSink::answering([
            Answer::Fail(2, || SinkError::Timeout),
            Answer::Fail(0, || SinkError::publish("down")),
        ]);
        run(
            sink.clone(),
            &[&["a", "b", "c"], &["d", "e"]],
            10,
            DeadLetters::default(),
        )
        .await;
        assert_eq!(sink.stored_keys(), ["a", "b", "c", "d", "e"]);
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                vec!["a", "b", "c", "d", "e"],
                vec!["c", "d", "e"],
                vec!["c", "d", "e"],
            ]
        );
    }

    /// Where the sink answers each message of a wave on its own, the rooms
    /// whose message it took move on while the one that failed is retried:
    /// one room's failure does not make the others publish again.
    #[tokio::test]
    async fn a_failed_message_of_a_wave_holds_back_only_its_own_room() {
        let sink = FakeSink::answering([Answer::FailFirst]);
        run(
            sink.clone(),
            &[&["a", "b", "c"], &["b", "c"]],
            10,
            DeadLetters::default(),
        )
        .await;
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(calls, [vec!["a", "b", "c"], vec!["a", "b", "c"]]);
        assert_eq!(sink.stored_keys(), ["b", "c", "a", "b", "c"]);
    }

    /// A destination that asks for a pause (`Retry-After`) is not asked
    /// again before it, however short the lane's own backoff.
    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_at_least_what_the_destination_asked_for() {
        let sink = FakeSink::answering([Answer::Fail(0, || SinkError::Throttled {
            cause: "the receiver answered 429".to_owned(),
            retry_after: Duration::from_secs(7),
        })]);
        let started = tokio::time::Instant::now();
        run(sink.clone(), &[&["a"]], 10, DeadLetters::default()).await;
        assert_eq!(sink.stored_keys(), ["a"]);
        assert_eq!(sink.calls.lock().unwrap().len(), 2);
        assert!(started.elapsed() >= Duration::from_secs(7));
    }

    /// A sink that stored a later event of a room and failed an earlier one
    /// must never end up holding the later one first: the lane never has
    /// two unacknowledged events of one room in flight.
    #[tokio::test]
    async fn a_room_stays_in_order_when_a_sink_stores_a_later_event_and_fails_an_earlier_one() {
        let sink = FakeSink::answering([Answer::StoreOnly(1)]);
        let (fanout, mut lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("fake", 1)], 100, LIMIT, None);
        let events = vec![event("a"), event("a"), event("b")];
        let ids: Vec<_> = events.iter().map(|e| e.id).collect();
        let receipt = fanout
            .admit(
                messages(events),
                crate::core::event::Source::Webhook,
                Instant::now(),
                None,
            )
            .await
            .unwrap();
        drop(fanout);
        let lane = lanes.pop().unwrap().pop().unwrap();
        run_lane(
            sink.clone(),
            lane,
            options(10, DeadLetters::default()),
            in_flight.sink(0),
        )
        .await;
        receipt.acknowledged().await;
        let stored: Vec<_> = sink.stored.lock().unwrap().iter().map(|e| e.id).collect();
        let first_a = stored.iter().position(|id| *id == ids[0]).unwrap();
        let second_a = stored.iter().position(|id| *id == ids[1]).unwrap();
        assert!(
            first_a < second_a,
            "room a's events were stored out of order: {stored:?}, sent {ids:?}"
        );
        // Each batch takes the first event of each room: b does not wait
        // for a's second.
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(calls[0], ["a", "b"]);
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch_and_span_parts() {
        let sink = FakeSink::answering([]);
        run(
            sink.clone(),
            &[&["a", "b", "c"], &["d", "e", "f", "g"]],
            3,
            DeadLetters::default(),
        )
        .await;
        let sizes: Vec<usize> = sink.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(sink.stored_keys(), ["a", "b", "c", "d", "e", "f", "g"]);
    }

    #[tokio::test]
    async fn a_rejected_event_is_dead_lettered_and_the_lane_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let sink =
            FakeSink::answering([Answer::Fail(1, || SinkError::Rejected("too large".into()))]);
        run(
            sink.clone(),
            &[&["a", "b", "c"]],
            10,
            DeadLetters::new(Some(path.clone())),
        )
        .await;
        assert_eq!(sink.stored_keys(), ["a", "c"]);
        let dead = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
        assert_eq!(line["sink"], "fake");
        assert_eq!(line["reason"], "too large");
        assert_eq!(line["event"]["data"]["roomId"], "b");
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_kept_is_retried_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the dead letter cannot be written.
        let sink = FakeSink::answering([Answer::Fail(0, || SinkError::Rejected("invalid".into()))]);
        run(
            sink.clone(),
            &[&["a", "b"]],
            10,
            DeadLetters::new(Some(dir.path().to_owned())),
        )
        .await;
        assert_eq!(sink.stored_keys(), ["a", "b"], "retried, then taken");
    }

    #[tokio::test]
    async fn a_part_is_acknowledged_once_its_events_are_even_if_later_ones_fail() {
        use futures_util::FutureExt;
        let sink = FakeSink::answering([Answer::Fail(2, || SinkError::Timeout), Answer::Stall]);
        let (fanout, mut lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("fake", 1)], 100, LIMIT, None);
        let receipts = admitted(&fanout, &[&["a", "b"], &["c"]]).await;
        let lane = lanes.pop().unwrap().pop().unwrap();
        let task = tokio::spawn(run_lane(
            sink.clone(),
            lane,
            options(10, DeadLetters::default()),
            in_flight.sink(0),
        ));
        // The first body is done after the first call, while "c" waits.
        receipts[0].acknowledged().await;
        assert!(receipts[1].acknowledged().now_or_never().is_none());
        sink.release.add_permits(1);
        receipts[1].acknowledged().await;
        drop(fanout);
        task.await.unwrap();
        assert_eq!(sink.stored_keys(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn the_lane_drains_what_it_holds_when_fan_out_closes() {
        let sink = FakeSink::answering([Answer::Fail(0, || SinkError::Timeout)]);
        let (fanout, mut lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("fake", 1)], 100, LIMIT, None);
        let _receipts = admitted(&fanout, &[&["a"], &["b"], &["c"]]).await;
        // The sources are gone before the lane even started.
        drop(fanout);
        let lane = lanes.pop().unwrap().pop().unwrap();
        run_lane(
            sink.clone(),
            lane,
            options(1, DeadLetters::default()),
            in_flight.sink(0),
        )
        .await;
        assert_eq!(sink.stored_keys(), ["a", "b", "c"]);
        assert_eq!(in_flight.current(), 0);
    }
}
