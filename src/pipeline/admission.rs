//! Admission: where a source's body goes. Into fan-out while it has room;
//! with a spool, into the spool while the spool is engaged or when fan-out
//! is full. Which of the two is decided under the spool's gate, so nothing
//! overtakes a spooled body.
//!
//! A body travels by value. Every way to refuse it hands it back whole
//! (`Refused`), so a source that waits and tries again always tries with
//! the body it was given: no path can drop or empty it.

use std::sync::Arc;
use std::time::Instant;

use crate::core::event::{Event, Message, Source};
use crate::pipeline::fanout::{bursty_count, Fanout, LogWrite, Receipt, Refused, SubmitError};
use crate::pipeline::spool::log::NewRecord;
use crate::pipeline::spool::{Durable, Gate, Spool, SpoolError, Ticket};

/// One body from a source: its events, each serialized once, and the body
/// as received, for the spool.
#[derive(Debug)]
pub struct Body {
    pub messages: Vec<Message>,
    pub record: NewRecord,
    /// When the source had read it, for the acknowledgement latency.
    pub received: Instant,
}

impl Body {
    /// A body of `events`, each serialized here, once for every sink, and
    /// outside any lock admission takes.
    pub fn new(events: Vec<Event>, record: NewRecord, received: Instant) -> Body {
        Body {
            messages: Message::all(events),
            record,
            received,
        }
    }

    fn source(&self) -> Source {
        self.record.source
    }
}

/// Why a body was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Pipeline(#[from] SubmitError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// How a body was taken.
#[derive(Debug)]
pub enum Accepted {
    /// Into fan-out: safe once the receipt completes.
    Receipt(Receipt),
    /// Into fan-out, a webhook body with a spool: safe once the receipt
    /// completes or, if the spool engages meanwhile, once the ticket says
    /// it is on disk.
    Waiting(Receipt, Ticket),
    /// Into the spool: safe once it is on disk. The body comes along, so
    /// that a failed write can still be answered or tried again.
    Spooled(Durable, Body),
}

/// Where a body goes while the spool is not engaged.
enum Route {
    Taken(Accepted),
    ToSpool(Vec<Message>),
    Refused(Vec<Message>, SubmitError),
}

/// The way into the pipeline, shared by every source.
#[derive(Debug, Clone)]
pub struct Admission {
    fanout: Fanout,
    spool: Option<Arc<Spool>>,
}

impl Admission {
    pub fn new(fanout: Fanout, spool: Option<Arc<Spool>>) -> Admission {
        Admission { fanout, spool }
    }

    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// Takes `body` without waiting: into fan-out, or, with a spool, into
    /// the spool when fan-out is full or the spool is engaged.
    // The error is the body itself, handed back by value: that it can never
    // be lost is the point, and moving it costs less than a box.
    #[allow(clippy::result_large_err)]
    pub fn offer(&self, body: Body) -> Result<Accepted, Refused<Body, AdmissionError>> {
        let Body {
            messages,
            record,
            received,
        } = body;
        let source = record.source;
        let back = |messages, record, reason: AdmissionError| {
            Refused::new(
                Body {
                    messages,
                    record,
                    received,
                },
                reason,
            )
        };
        let spool = match &self.spool {
            Some(spool) if !messages.is_empty() => spool,
            _ => {
                return match self.fanout.try_admit(messages, source, received) {
                    Ok(receipt) => Ok(Accepted::Receipt(receipt)),
                    Err(refused) => Err(back(refused.body, record, refused.reason.into())),
                }
            }
        };
        // What the replayer could never submit must not be spooled.
        if let Err(reason) = self.fanout.fits(&messages) {
            return Err(back(messages, record, reason.into()));
        }
        // What a replay of the whole body publishes (and the lag counts).
        let mut record = record;
        record.events = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        let mut gate = spool.gate();
        let messages = if spool.is_engaged(&gate) {
            messages
        } else {
            match self.route_unengaged(spool, &mut gate, messages, &mut record, received) {
                Route::Taken(accepted) => return Ok(accepted),
                Route::ToSpool(messages) => messages,
                Route::Refused(messages, reason) => {
                    return Err(back(messages, record, reason.into()))
                }
            }
        };
        let body = Body {
            messages,
            record,
            received,
        };
        Self::spool_body(&self.fanout, spool, &mut gate, body)
    }

    /// A body while the spool is not engaged: into fan-out (a webhook held
    /// with a ticket, another copied to the log); or, where fan-out has no
    /// room in a way the spool answers, the spool engages and takes it.
    fn route_unengaged(
        &self,
        spool: &Arc<Spool>,
        gate: &mut Gate,
        messages: Vec<Message>,
        record: &mut NewRecord,
        received: Instant,
    ) -> Route {
        let source = record.source;
        let refused = match self.fanout.try_admit(messages, source, received) {
            // A webhook is answered once its body is safe: if the spool
            // engages before the sinks have it, it goes to disk (whole: a
            // replay after a crash brings back the events deduplication
            // dropped from it too).
            Ok(receipt) if source == Source::Webhook => {
                let ticket = spool.hold(gate, record.clone(), receipt.clone());
                return Route::Taken(Accepted::Waiting(receipt, ticket));
            }
            // What the notifier read is on disk before a crash can take
            // it, and before a webhook that repeats it is answered.
            Ok(receipt) => {
                spool.log_copy(gate, record.clone(), &receipt);
                return Route::Taken(Accepted::Receipt(receipt));
            }
            Err(refused) => refused,
        };
        let why = match refused.reason {
            SubmitError::Full => "the pipeline is full",
            // Bursty slots full because a sink has stopped: the spool takes
            // the body, so the other sinks go on.
            SubmitError::BurstyFull if !self.fanout.sinks_moving(spool.engage_after()) => {
                "a sink that stopped holds its bursty slots"
            }
            // A webhook is never posted again: while the spool has room it
            // takes the body rather than a 503.
            SubmitError::BurstyFull if source == Source::Webhook => {
                "a webhook's bursty events found their slots full"
            }
            // A flood of voice activity from the notifier into sinks that
            // keep up waits for its slots, which stops reading the socket
            // (backpressure), as without a spool.
            reason => return Route::Refused(refused.body, reason),
        };
        spool.engage(gate, why);
        Route::ToSpool(refused.body)
    }

    /// Appends `body` to the spool, under the gate: room first, for the
    /// body with every event skipped at worst (what deduplication records
    /// must not be refused after); then deduplication and room activity
    /// see it, in the order the gate gives, as dispatch would, and the
    /// replay leaves out what was dropped.
    #[allow(clippy::result_large_err)]
    fn spool_body(
        fanout: &Fanout,
        spool: &Spool,
        gate: &mut Gate,
        body: Body,
    ) -> Result<Accepted, Refused<Body, AdmissionError>> {
        let worst = body.record.entry_len() + 4 * body.messages.len() as u64;
        let room = match spool.reserve(gate, worst, body.source()) {
            Ok(room) => room,
            Err(error) => return Err(Refused::new(body, error.into())),
        };
        let Body {
            messages,
            mut record,
            received,
        } = body;
        let write = LogWrite::default();
        record.skips = fanout.observe_spooled(&messages, &write);
        let appended = spool.append_reserved(gate, room, record.clone(), write);
        let body = Body {
            messages,
            record,
            received,
        };
        match appended {
            Ok(durable) => Ok(Accepted::Spooled(durable, body)),
            Err(error) => Err(Refused::new(body, error.into())),
        }
    }

    /// Takes `body`, waiting for room: in fan-out without a spool; with one,
    /// in the spool (or for the bursty slots it needs). Returns once the
    /// body is admitted (with its receipt) or on disk; refuses only a body
    /// that can never be taken, or at shutdown.
    #[allow(clippy::result_large_err)]
    pub async fn offer_waiting(
        &self,
        body: Body,
    ) -> Result<Option<Receipt>, Refused<Body, AdmissionError>> {
        let Some(spool) = &self.spool else {
            let Body {
                messages,
                record,
                received,
            } = body;
            return match self
                .fanout
                .admit(messages, record.source, received, None)
                .await
            {
                Ok(receipt) => Ok(Some(receipt)),
                Err(refused) => Err(Refused::new(
                    Body {
                        messages: refused.body,
                        record,
                        received,
                    },
                    refused.reason.into(),
                )),
            };
        };
        let mut body = body;
        loop {
            body = match self.offer(body) {
                Ok(Accepted::Receipt(receipt) | Accepted::Waiting(receipt, _)) => {
                    return Ok(Some(receipt))
                }
                Ok(Accepted::Spooled(durable, body)) => match durable.await {
                    Ok(Ok(())) => return Ok(None),
                    Ok(Err(error)) => {
                        tracing::error!(error = %error, source = body.source().as_str(), "spool: a body waits for the spool to write again");
                        spool.wait_for_space().await;
                        body
                    }
                    Err(_) => return Err(Refused::new(body, SubmitError::Closed.into())),
                },
                Err(Refused {
                    body,
                    reason: AdmissionError::Spool(SpoolError::Full),
                }) => {
                    spool.wait_for_space().await;
                    body
                }
                Err(Refused {
                    body,
                    reason: AdmissionError::Pipeline(SubmitError::BurstyFull),
                }) => {
                    self.fanout.bursty_room(bursty_count(&body.messages)).await;
                    body
                }
                Err(refused) => return Err(refused),
            };
        }
    }

    /// Admits events that have no body to spool (reconciled events of a
    /// peer type this version cannot name): waits until the spool is
    /// disengaged, so that they do not overtake what it holds.
    pub async fn submit_events(
        &self,
        messages: Vec<Message>,
        source: Source,
    ) -> Result<Receipt, Refused<Vec<Message>>> {
        if let Some(spool) = &self.spool {
            spool.disengaged().await;
        }
        self.fanout
            .admit(messages, source, Instant::now(), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Data;
    use crate::core::normalize::{normalize_body, Origin};
    use crate::core::proto::server_message::{NotificationBatch, RoomCreated, VadNotification};
    use crate::core::proto::{Content, ServerMessage};
    use crate::pipeline::fanout::{BurstyLimit, InFlight, LaneReceiver, SinkSpec, WhenFull};
    use crate::pipeline::spool::{log, replay, test_options, Options};
    use futures_util::FutureExt;
    use prost::Message as _;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const LIMIT: BurstyLimit = BurstyLimit {
        max_in_flight: 10,
        when_full: WhenFull::Wait,
    };

    /// Fan-out to one sink of one lane, behind admission with `spool`.
    fn admitting(
        capacity: usize,
        limit: BurstyLimit,
        spool: &Arc<Spool>,
    ) -> (Admission, Vec<Vec<LaneReceiver>>, InFlight) {
        let (fanout, lanes, in_flight) =
            Fanout::new(&[SinkSpec::all("a", 1)], capacity, limit, None);
        (
            Admission::new(fanout, Some(spool.clone())),
            lanes,
            in_flight,
        )
    }

    /// The spool replays of the first `sinks` sinks, until stopped.
    struct Replaying {
        shutdown: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Replaying {
        fn start(
            spool: &Arc<Spool>,
            admission: &Admission,
            in_flight: &InFlight,
            sinks: usize,
        ) -> Replaying {
            let shutdown = CancellationToken::new();
            let tasks = (0..sinks)
                .map(|sink| {
                    tokio::spawn(replay(
                        spool.clone(),
                        sink,
                        admission.fanout().clone(),
                        in_flight.clone(),
                        Arc::from("test"),
                        shutdown.clone(),
                    ))
                })
                .collect();
            Replaying { shutdown, tasks }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            for task in self.tasks {
                task.await.unwrap();
            }
        }
    }

    fn body_of(content: Content, source: Source) -> Body {
        let bytes = ServerMessage {
            content: Some(content),
        }
        .encode_to_vec();
        let origin = Origin::now(source, Arc::from("test"));
        let events = normalize_body(&bytes, &origin).unwrap().events;
        Body::new(
            events,
            crate::pipeline::spool::record(&origin, bytes.into()),
            Instant::now(),
        )
    }

    /// A body of one roomCreated per room.
    fn body(rooms: &[&str]) -> Body {
        let batch = NotificationBatch {
            notifications: rooms
                .iter()
                .map(|room| ServerMessage {
                    content: Some(Content::RoomCreated(RoomCreated {
                        room_id: (*room).to_owned(),
                    })),
                })
                .collect(),
        };
        body_of(Content::NotificationBatch(batch), Source::Webhook)
    }

    fn vad_body(room: &str) -> Body {
        let vad = VadNotification {
            room_id: room.to_owned(),
            peer_id: "p".to_owned(),
            track_id: "t".to_owned(),
            status: 2,
        };
        body_of(Content::VadNotification(vad), Source::Notifier)
    }

    fn ids(body: &Body) -> Vec<uuid::Uuid> {
        body.messages.iter().map(|m| m.event.id).collect()
    }

    fn room(event: &Event) -> String {
        match &event.data {
            Data::Room(room) => room.room_id.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// Takes the lane's next `n` events, acknowledging each part.
    async fn take(lane: &mut LaneReceiver, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let part = lane.recv().await.unwrap();
            part.acknowledge();
            out.extend(part.messages().map(|m| m.event.clone()));
        }
        out
    }

    /// Takes parts from the lane, acknowledging each, until one of `ids`
    /// arrives; None when the lane closes first.
    async fn take_until(lane: &mut LaneReceiver, ids: &[uuid::Uuid]) -> Option<Event> {
        loop {
            let part = lane.recv().await?;
            part.acknowledge();
            let found = part.messages().find(|m| ids.contains(&m.event.id));
            if let Some(m) = found {
                return Some(m.event.clone());
            }
        }
    }

    /// `offer_waiting(body)`, which must not be done at its first poll, as a
    /// task.
    fn spawn_waiting(
        admission: &Admission,
        body: Body,
    ) -> tokio::task::JoinHandle<Result<(), AdmissionError>> {
        let mut waiting = Box::pin({
            let admission = admission.clone();
            async move {
                admission
                    .offer_waiting(body)
                    .await
                    .map(drop)
                    .map_err(|r| r.reason)
            }
        });
        assert!((&mut waiting).now_or_never().is_none(), "the body waits");
        tokio::spawn(waiting)
    }

    async fn durable(accepted: Accepted) {
        let Accepted::Spooled(durable, _) = accepted else {
            panic!("the body is spooled");
        };
        durable.await.unwrap().unwrap();
    }

    /// A webhook whose voice activity finds the bursty slots full while the
    /// sinks keep up is taken by the spool: a 503 is only for a spool
    /// that cannot take the body, since Fishjam does not post it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_meeting_full_bursty_slots_is_spooled_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let limit = BurstyLimit {
            max_in_flight: 1,
            when_full: WhenFull::Wait,
        };
        let (admission, mut lanes, _) = admitting(10, limit, &spool);
        admission.offer(vad_body("r")).unwrap();
        let _held = lanes[0][0].recv().await.unwrap();
        let vad = VadNotification {
            room_id: "r".to_owned(),
            peer_id: "p".to_owned(),
            track_id: "t".to_owned(),
            status: 2,
        };
        let batch = NotificationBatch {
            notifications: vec![
                ServerMessage {
                    content: Some(Content::RoomCreated(RoomCreated {
                        room_id: "r".to_owned(),
                    })),
                },
                ServerMessage {
                    content: Some(Content::VadNotification(vad)),
                },
            ],
        };
        let webhook = body_of(Content::NotificationBatch(batch), Source::Webhook);
        let accepted = admission
            .offer(webhook)
            .map_err(|refused| refused.reason)
            .expect("the spool has room for the body");
        assert!(answered(accepted, Duration::from_secs(5)).await);
    }

    /// Whether a webhook body that `offer` took would be answered 2xx
    /// within `limit`, by the rule `sources/webhook.rs` answers with: every
    /// sink acknowledged it, or it is on disk.
    async fn answered(accepted: Accepted, limit: Duration) -> bool {
        let safe = async {
            match accepted {
                Accepted::Receipt(receipt) => receipt.acknowledged().await,
                Accepted::Waiting(receipt, ticket) => loop {
                    if receipt.is_acknowledged() {
                        return;
                    }
                    if let Some(durable) = ticket.spooled() {
                        if let Ok(Ok(())) = durable.await {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                },
                Accepted::Spooled(durable, _) => {
                    if !matches!(durable.await, Ok(Ok(()))) {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::time::timeout(limit, safe).await.is_ok()
    }

    /// With both sources on, a webhook whose events the notifier delivered
    /// first may be answered 2xx only if those events survive a crash: the
    /// notifier's copy only in fan-out's memory is not enough.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_of_duplicates_answered_2xx_survives_a_crash() {
        use crate::pipeline::dedup::Deduplicator;
        let dir = tempfile::tempdir().unwrap();
        let room_created = || {
            Content::RoomCreated(RoomCreated {
                room_id: "r1".to_owned(),
            })
        };
        let answered_2xx = {
            let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
            let dedup = Deduplicator::new(Duration::from_secs(60), 100);
            let (fanout, mut lanes, _) =
                Fanout::new(&[SinkSpec::all("a", 1)], 10, LIMIT, Some(dedup));
            let admission = Admission::new(fanout, Some(spool.clone()));
            // The notifier's copy reaches the sink, which never acknowledges it.
            admission
                .offer_waiting(body_of(room_created(), Source::Notifier))
                .await
                .unwrap();
            let _held = lanes[0][0].recv().await.unwrap();
            // Fishjam posts the same notification as a webhook.
            let accepted = admission
                .offer(body_of(room_created(), Source::Webhook))
                .unwrap();
            let answered_2xx = answered(accepted, Duration::from_secs(1)).await;
            // The bridge is killed: what is not on disk is gone.
            spool.close().await;
            answered_2xx
        };
        if !answered_2xx {
            return;
        }
        let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let (admission, mut lanes, in_flight) = admitting(10, LIMIT, &spool);
        let replaying = Replaying::start(&spool, &admission, &in_flight, 1);
        let replayed = tokio::time::timeout(Duration::from_secs(5), take(&mut lanes[0][0], 1))
            .await
            .expect("a webhook answered 2xx is delivered after a crash");
        assert_eq!(room(&replayed[0]), "r1");
        replaying.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spooled_bodies_follow_earlier_ones_in_order_then_the_spool_disengages() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let (admission, mut lanes, in_flight) = admitting(2, LIMIT, &spool);

        assert!(matches!(
            admission.offer(body(&["r1"])).unwrap(),
            Accepted::Receipt(_) | Accepted::Waiting(..)
        ));
        // Two more events do not fit: the spool engages and takes the body.
        let b = body(&["r1", "r2"]);
        let b_ids = ids(&b);
        durable(admission.offer(b).unwrap()).await;
        // Engaged, even a body that would fit goes behind the spooled one.
        durable(admission.offer(body(&["r1"])).unwrap()).await;

        let replaying = Replaying::start(&spool, &admission, &in_flight, 1);
        let lane = &mut lanes[0][0];
        let seen = take(lane, 4).await;
        assert_eq!(
            seen.iter().map(room).collect::<Vec<_>>(),
            ["r1", "r1", "r2", "r1"]
        );
        // Rebuilt from the spool with the ids they were given on arrival.
        assert_eq!(seen[1].id, b_ids[0]);
        assert_eq!(seen[2].id, b_ids[1]);

        // Everything delivered: the spool disengages and deletes what it held.
        spool.disengaged().await;
        assert!(matches!(
            admission.offer(body(&["r3"])).unwrap(),
            Accepted::Receipt(_) | Accepted::Waiting(..)
        ));
        assert_eq!(take(lane, 1).await.len(), 1);
        replaying.stop().await;
        spool.close().await;
        let recovered = log::recover(dir.path()).unwrap();
        assert_eq!((recovered.watermark, recovered.pending()), (2, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_spool_refuses_and_a_restart_replays_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let small = Options {
            max_bytes: 300,
            ..test_options(dir.path())
        };
        let spool = Spool::open(&small, &[Arc::from("a")]).unwrap();
        let (admission, _lanes, _) = admitting(2, LIMIT, &spool);
        // The first body fills the pipeline, whose sink never acknowledges.
        assert!(matches!(
            admission.offer(body(&["r0", "r0"])).unwrap(),
            Accepted::Receipt(_) | Accepted::Waiting(..)
        ));
        let mut spooled = Vec::new();
        let mut refused = 0;
        for _ in 0..10 {
            let body = body(&["r1", "r2"]);
            let these = ids(&body);
            match admission.offer(body) {
                Ok(accepted) => {
                    durable(accepted).await;
                    spooled.extend(these);
                }
                Err(error) => {
                    assert_eq!(error.reason, AdmissionError::Spool(SpoolError::Full));
                    assert_eq!(ids(&error.body), these, "the body comes back whole");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0 && !spooled.is_empty(), "{refused} refused");
        spool.close().await;
        drop(admission);
        drop(spool);

        // The next run replays each spooled event once, with its id, even
        // with a bound too small for a whole body (it goes in parts).
        let spool = Spool::open(&small, &[Arc::from("a")]).unwrap();
        let (admission, mut lanes, in_flight) = admitting(1, LIMIT, &spool);
        let replaying = Replaying::start(&spool, &admission, &in_flight, 1);
        drop(admission);
        let replayed = tokio::time::timeout(
            Duration::from_secs(30),
            take(&mut lanes[0][0], spooled.len()),
        )
        .await
        .expect("every spooled event is replayed");
        assert_eq!(replayed.iter().map(|e| e.id).collect::<Vec<_>>(), spooled);
        spool.disengaged().await;
        replaying.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_body_that_meets_a_full_pipeline_and_a_full_spool_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        // A spool with no room for any body.
        let none = Options {
            max_bytes: 1,
            ..test_options(dir.path())
        };
        let spool = Spool::open(&none, &[Arc::from("a")]).unwrap();
        let (admission, mut lanes, in_flight) = admitting(2, LIMIT, &spool);
        admission.offer(body(&["r0", "r0"])).unwrap();
        // A notifier frame meets the full pipeline and the full spool: it
        // waits for room, and must not be lost.
        let waited = body(&["waited"]);
        let ids = ids(&waited);
        let waiting = spawn_waiting(&admission, waited);
        let replaying = Replaying::start(&spool, &admission, &in_flight, 1);
        let seen =
            tokio::time::timeout(Duration::from_secs(30), take_until(&mut lanes[0][0], &ids))
                .await
                .expect("the waited body's event reaches the sink");
        assert_eq!(seen.map(|e| room(&e)).as_deref(), Some("waited"));
        waiting.await.unwrap().unwrap();
        replaying.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_bursty_body_waits_for_its_slots_with_a_spool_as_without() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&test_options(dir.path()), &[Arc::from("a")]).unwrap();
        let limit = BurstyLimit {
            max_in_flight: 1,
            when_full: WhenFull::Wait,
        };
        let (admission, mut lanes, _) = admitting(10, limit, &spool);
        admission.offer(vad_body("r")).unwrap();
        // The bursty slot is taken: the next frame waits for it.
        let next = vad_body("r");
        let ids = ids(&next);
        let waiting = spawn_waiting(&admission, next);
        let seen =
            tokio::time::timeout(Duration::from_secs(30), take_until(&mut lanes[0][0], &ids))
                .await
                .expect("the waited body's event reaches the sink");
        assert!(seen.is_some());
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_that_takes_nothing_holds_back_neither_the_other_sink_nor_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            &test_options(dir.path()),
            &[Arc::from("fast"), Arc::from("stuck")],
        )
        .unwrap();
        let (fanout, mut lanes, in_flight) = Fanout::new(
            &[SinkSpec::all("fast", 1), SinkSpec::all("stuck", 1)],
            2,
            LIMIT,
            None,
        );
        let admission = Admission::new(fanout, Some(spool.clone()));
        let replaying = Replaying::start(&spool, &admission, &in_flight, 2);
        let mut stuck = lanes.pop().unwrap().pop().unwrap();
        let mut fast = lanes.pop().unwrap().pop().unwrap();
        // The stuck sink takes two events and never acknowledges them:
        // its bound is full, the spool engages, and every later body is
        // answered once on disk.
        let mut offered = Vec::new();
        for i in 0..20 {
            let body = body(&[&format!("r{i}")]);
            offered.extend(ids(&body));
            match admission.offer(body).unwrap() {
                Accepted::Receipt(_) | Accepted::Waiting(..) => {}
                spooled => durable(spooled).await,
            }
        }
        // The fast sink gets every event, in order, at once.
        let seen = tokio::time::timeout(Duration::from_secs(30), take(&mut fast, 20))
            .await
            .expect("the fast sink is not held back");
        assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), offered);
        let held: Vec<_> = [stuck.recv().await.unwrap(), stuck.recv().await.unwrap()].into();
        assert_eq!(in_flight.of(0), 0, "the fast sink holds nothing");
        assert_eq!(in_flight.of(1), 2, "the stuck sink holds its bound");
        // The stuck sink's cursor stays behind the fast one's.
        let lag = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let lag = spool.lag();
                if lag[0].bodies == 0 {
                    return lag;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the fast sink acknowledges every spooled body");
        assert_eq!(lag[1].cursor, 0);
        assert_eq!(lag[1].events, 18, "{lag:?}");
        assert!(lag[0].cursor >= 18);
        // Once the stuck sink takes its events, it catches up, in order,
        // and the spool disengages.
        for part in &held {
            part.acknowledge();
        }
        drop(held);
        let mut rest = vec![];
        while rest.len() < 18 {
            let part = stuck.recv().await.unwrap();
            part.acknowledge();
            rest.extend(part.messages().map(|m| m.event.id));
        }
        assert_eq!(rest, offered[2..]);
        spool.disengaged().await;
        replaying.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_held_when_the_spool_engages_is_spooled_first_and_sent_to_no_sink_twice() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            &test_options(dir.path()),
            &[Arc::from("fast"), Arc::from("stuck")],
        )
        .unwrap();
        let (fanout, mut lanes, in_flight) = Fanout::new(
            &[SinkSpec::all("fast", 1), SinkSpec::all("stuck", 1)],
            10,
            LIMIT,
            None,
        );
        let admission = Admission::new(fanout, Some(spool.clone()));
        let mut stuck = lanes.pop().unwrap().pop().unwrap();
        let mut fast = lanes.pop().unwrap().pop().unwrap();
        // A webhook body in fan-out; the fast sink has it, the stuck one not.
        let held = body(&["r1"]);
        let held_ids = ids(&held);
        let Accepted::Waiting(receipt, ticket) = admission.offer(held).unwrap() else {
            panic!("a webhook body with a spool is held with a ticket");
        };
        assert_eq!(take(&mut fast, 1).await[0].id, held_ids[0]);
        assert!(ticket.spooled().is_none(), "not spooled while not engaged");
        // The spool engages (a webhook waited): the held body goes to the
        // log first, then the next body.
        spool.engage_now("test");
        ticket.spooled().expect("spooled").await.unwrap().unwrap();
        // Engaging again (another webhook waited) appends nothing twice.
        spool.engage_now("again");
        let next = body(&["r1"]);
        let next_ids = ids(&next);
        durable(admission.offer(next).unwrap()).await;
        let replaying = Replaying::start(&spool, &admission, &in_flight, 2);
        // The fast sink gets only what it did not have.
        assert_eq!(take(&mut fast, 1).await[0].id, next_ids[0]);
        // The stuck sink gets the held body once, from fan-out, then the next.
        let seen = take(&mut stuck, 2).await;
        assert_eq!(
            seen.iter().map(|e| e.id).collect::<Vec<_>>(),
            [held_ids[0], next_ids[0]]
        );
        receipt.acknowledged().await;
        spool.disengaged().await;
        let lag = spool.lag();
        assert_eq!((lag[0].cursor, lag[1].cursor), (2, 2));
        assert!(fast.try_recv().is_err(), "nothing more for the fast sink");
        drop(ticket);
        replaying.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursty_slots_held_by_a_sink_that_stopped_send_voice_activity_to_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let quick = Options {
            engage_after: Duration::from_millis(20),
            ..test_options(dir.path())
        };
        let spool = Spool::open(&quick, &[Arc::from("fast"), Arc::from("stuck")]).unwrap();
        let limit = BurstyLimit {
            max_in_flight: 1,
            when_full: WhenFull::Wait,
        };
        let (fanout, mut lanes, in_flight) = Fanout::new(
            &[SinkSpec::all("fast", 1), SinkSpec::all("stuck", 1)],
            10,
            limit,
            None,
        );
        let admission = Admission::new(fanout, Some(spool.clone()));
        let mut stuck = lanes.pop().unwrap().pop().unwrap();
        let mut fast = lanes.pop().unwrap().pop().unwrap();
        admission.offer(vad_body("r")).unwrap();
        take(&mut fast, 1).await;
        let _held = stuck.recv().await.unwrap();
        // While the stuck sink still counts as moving, a flood of voice
        // activity waits, as without a spool.
        let early = admission.offer(vad_body("r"));
        if let Err(refused) = &early {
            assert_eq!(
                refused.reason,
                AdmissionError::Pipeline(SubmitError::BurstyFull)
            );
        }
        drop(early);
        tokio::time::timeout(Duration::from_secs(30), async {
            while admission.fanout().sinks_moving(quick.engage_after) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a sink that delivers nothing stops counting as moving");
        // Once it has stopped, the spool takes the body and the fast sink
        // gets it from there.
        let next = vad_body("r");
        let next_ids = ids(&next);
        durable(admission.offer(next).unwrap()).await;
        let replaying = Replaying::start(&spool, &admission, &in_flight, 1);
        let seen = tokio::time::timeout(Duration::from_secs(30), take_until(&mut fast, &next_ids))
            .await
            .expect("the fast sink is not held back");
        assert!(seen.is_some());
        replaying.stop().await;
    }
}
