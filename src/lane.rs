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

use crate::backoff::Backoff;
use crate::core::event::Message;
use crate::dead_letter::DeadLetters;
use crate::fanout::{LaneReceiver, Part, SinkProgress};
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
    // The rooms of a batch, kept from one batch to the next for its room.
    let mut rooms = foldhash::HashSet::default();
    // Parts are received a few at a time: a part can hold a whole body.
    let receive = options.max_batch.max(1);
    while lane.recv_many(&mut parts, receive).await > 0 {
        // A lane that was idle starts its clock here: what the sink holds
        // is late from now on, not from its last delivery long ago.
        progress.took_work();
        let count: usize = parts.iter().map(Part::len).sum();
        metrics.queued(-(count as f64));
        deliver(&*sink, &parts, &options, &metrics, &mut rooms).await;
        // Dropping the parts frees their slots in this sink's bound.
        parts.clear();
        progress.progressed();
    }
}

/// Publishes the messages of `parts` in batches of at most `max_batch`
/// until every one is acknowledged, acknowledging each part as soon as all
/// of its messages are. A failure retries from the first unacknowledged
/// message; messages after it may be published again (same id).
async fn deliver<S: Publish>(
    sink: &S,
    parts: &[Part],
    options: &LaneOptions,
    metrics: &telemetry::SinkMetrics,
    rooms: &mut foldhash::HashSet<u64>,
) {
    let mut messages: Vec<&Message> = Vec::with_capacity(parts.iter().map(Part::len).sum());
    messages.extend(parts.iter().flat_map(Part::messages));
    // Where each part ends in `messages`.
    let mut ends = parts.iter().scan(0, |end, part| {
        *end += part.len();
        Some(*end)
    });
    let mut next_part = 0;
    let mut next_end = ends.next();
    let mut done = 0;
    let mut backoff = Backoff::new(options.retry_initial_backoff, options.retry_max_backoff);
    let max_batch = options.max_batch.max(1);
    loop {
        // Acknowledge the parts whose messages are all done.
        while next_end.is_some_and(|end| end <= done) {
            parts[next_part].acknowledge();
            next_part += 1;
            next_end = ends.next();
        }
        if done == messages.len() {
            return;
        }
        let end = if sink.stores_prefixes() {
            messages.len().min(done + max_batch)
        } else {
            distinct_rooms_end(&messages, done, max_batch, rooms)
        };
        let pending = &messages[done..end];
        let started = Instant::now();
        match sink.publish(pending).await {
            Ok(()) => {
                metrics.published(pending.len(), started.elapsed());
                done += pending.len();
                backoff = Backoff::new(options.retry_initial_backoff, options.retry_max_backoff);
            }
            Err(PublishError {
                acknowledged,
                error,
            }) => {
                let acknowledged = acknowledged.min(pending.len());
                if acknowledged > 0 {
                    metrics.published(acknowledged, started.elapsed());
                }
                done += acknowledged;
                if let (SinkError::Rejected(reason), Some(refused)) = (&error, messages.get(done)) {
                    telemetry::sink_failed(sink.name(), error.reason(), 1);
                    match options
                        .dead_letters
                        .store(sink.name(), reason, refused)
                        .await
                    {
                        Ok(()) => {
                            // Kept: done with it, and on with its room.
                            done += 1;
                            continue;
                        }
                        Err(failure) => tracing::error!(
                            sink = sink.name(),
                            error = %telemetry::Chain(&failure),
                            "cannot write a dead letter; the event is retried"
                        ),
                    }
                }
                telemetry::sink_failed(sink.name(), error.reason(), messages.len() - done);
                telemetry::sink_retry(sink.name());
                let delay = backoff.next_delay();
                tracing::warn!(
                    sink = sink.name(),
                    error = %telemetry::Chain(&error),
                    attempt = backoff.attempts(),
                    delay_ms = delay.as_millis() as u64,
                    pending = messages.len() - done,
                    "publish failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Where the batch that starts at `from` ends: at most `max_batch`
/// messages, cut before the first that repeats a key (room) of the batch,
/// so that no room has two messages unacknowledged at once.
fn distinct_rooms_end(
    messages: &[&Message],
    from: usize,
    max_batch: usize,
    rooms: &mut foldhash::HashSet<u64>,
) -> usize {
    use std::hash::BuildHasher;
    rooms.clear();
    let hasher = foldhash::fast::FixedState::default();
    let last = messages.len().min(from + max_batch);
    (from..last)
        .find(|&i| !rooms.insert(hasher.hash_one(messages[i].event.key())))
        .unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Event;
    use crate::fanout::tests::{event, messages};
    use crate::fanout::{BurstyLimit, Fanout, SinkSpec, WhenFull};
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
                    return Err(PublishError {
                        acknowledged: 0,
                        error: SinkError::Timeout,
                    });
                }
                Answer::All => (batch.len(), None),
                Answer::Stall => {
                    self.release.acquire().await.unwrap().forget();
                    (batch.len(), None)
                }
                Answer::Fail(n, error) => (n.min(batch.len()), Some(error())),
            };
            self.store(batch[..taken].iter().copied());
            match error {
                None => Ok(()),
                Some(error) => Err(PublishError {
                    acknowledged: taken,
                    error,
                }),
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
    async fn admitted(fanout: &Fanout, bodies: &[&[&str]]) -> Vec<crate::fanout::Receipt> {
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
