//! Which bridge of a fleet holds Fishjam's notifier.
//!
//! Every replica serves webhooks, but only one may hold the notifier
//! WebSocket: two would publish every notification twice. The replicas
//! share a lease with a time to live in a store they all reach (a NATS
//! JetStream key-value bucket, `nats.rs`). `hold` is the one loop over any
//! store: a follower tries to take the lease on every beat (and as soon as
//! the store says the current holder's lease runs out); the holder renews
//! it on the same beat.
//!
//! The rule that keeps two holders from overlapping is local: a holder
//! counts its lease as valid until the start of its last successful renewal
//! plus the time to live, less a margin, and stops holding at that instant
//! whatever the store answers or fails to answer. The store cannot have let
//! the lease expire earlier (it stamped the renewal after that start), so
//! the notifier socket is closed before any other replica can take over.

pub mod kubernetes;
pub mod nats;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::backoff::Backoff;
use crate::telemetry;

/// What one try to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now.
    Held,
    /// Another replica holds it; its lease runs out in `free_in` at the
    /// latest, as far as the store says.
    Taken {
        holder: String,
        free_in: Option<Duration>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds the lease: this one's renewal was refused.
    #[error("the lease is held by {0}")]
    Lost(String),
    /// The store could not be asked (connection, timeout, server error).
    #[error("lease store: {0}")]
    Store(String),
}

impl LeaseError {
    /// A store's error, with its causes on one line.
    fn store(error: &(dyn std::error::Error + 'static)) -> LeaseError {
        LeaseError::Store(telemetry::Chain(error).to_string())
    }
}

/// What a store records as the lease's holder: this replica's identity and
/// a number drawn at start, so that a take whose answer was lost (the lease
/// names a holder, but is it this process?) is told from another replica
/// with the same identity.
fn holder_value(identity: &str) -> String {
    let nonce: u64 = rand::random();
    format!("{identity} {nonce:016x}")
}

/// The identity in a holder value (another writer's is shown whole).
fn identity_in(holder: &str) -> &str {
    holder
        .rsplit_once(' ')
        .map_or(holder, |(identity, _)| identity)
}

/// A store of one lease. Each call is a single round trip; `hold` decides
/// when to call, and gives up on a call that outlives the lease.
pub trait LeaseStore: Send + 'static {
    /// Takes the lease when nobody holds it (or this replica already does).
    fn acquire(&mut self) -> impl Future<Output = Result<Attempt, LeaseError>> + Send;
    /// Extends the lease this replica holds by the time to live.
    fn renew(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Gives the lease up at once, so that a follower need not wait for it
    /// to run out (a graceful stop, a rolling update).
    fn release(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Resolves when a holder says it released the lease, so a follower
    /// tries at once instead of on its next beat (a rolling update hands
    /// over in milliseconds). A store that cannot tell never resolves.
    fn released(&mut self) -> impl Future<Output = ()> + Send;
    /// Which store this is, for logs and `/readyz` (`"nats"`).
    fn backend(&self) -> &'static str;
}

/// The lease's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long the store keeps a lease that is not renewed.
    pub ttl: Duration,
    /// How often the holder renews and a follower tries to take over.
    pub renew_every: Duration,
}

impl Timing {
    /// What the holder takes off the time to live: time for the notifier
    /// to close its socket after the holder stops, and for a renewal's
    /// answer to come back. A fifth of the time to live.
    pub fn margin(&self) -> Duration {
        self.ttl / 5
    }

    /// Until when a lease renewed (or taken) by a request sent at `sent` is
    /// this replica's.
    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin()
    }
}

/// This replica's part in the election, for `/readyz`, `/status` and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub backend: &'static str,
    pub identity: String,
    pub role: Role,
    /// The holder's identity, as last seen (this replica's own while it holds).
    pub holder: Option<String>,
}

/// This replica's part: it holds the lease, or follows whoever does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Holder,
    #[default]
    Follower,
}

/// What the notifier follows: whether this replica holds the lease now.
#[derive(Clone)]
pub struct Leadership {
    holding: watch::Receiver<bool>,
    /// How long the notifier may take to close and drain its socket once
    /// the lease is lost, in milliseconds, set by the elector as it lets
    /// go: half the margin when the lease ran out here (the socket is
    /// closed before the store lets another replica take it), nothing when
    /// the store says another replica holds it already.
    drain_ms: Arc<AtomicU64>,
}

impl Leadership {
    /// A leadership that is always held: one bridge, no election.
    pub fn always() -> Leadership {
        let (_, holding) = watch::channel(true);
        Leadership {
            holding,
            drain_ms: Arc::default(),
        }
    }

    /// How long the socket may drain now that the lease is lost.
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms.load(Ordering::SeqCst))
    }

    pub fn is_held(&self) -> bool {
        *self.holding.borrow()
    }

    /// Returns once this replica holds the lease (at once if it does). A
    /// loop that ended (shutdown) never hands it over.
    pub async fn acquired(&mut self) {
        if self.holding.wait_for(|held| *held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Returns once this replica no longer holds the lease. Without an
    /// election (or once the loop ended) it never returns.
    pub async fn lost(&mut self) {
        if self.holding.wait_for(|held| !*held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The side of the election that holds or follows: made before its store is
/// reachable, so that the notifier and `/readyz` can follow it at once.
pub struct Elector {
    holding: watch::Sender<bool>,
    drain_ms: Arc<AtomicU64>,
    status: Arc<Mutex<Status>>,
    identity: String,
    timing: Timing,
}

/// An election on `backend` for this replica (`identity`): the
/// `Leadership` the notifier waits on, the status shown by `/readyz`, and
/// the `Elector` to run once its store is open.
pub fn elector(
    backend: &'static str,
    identity: String,
    timing: Timing,
) -> (Leadership, Arc<Mutex<Status>>, Elector) {
    let (holding, receiver) = watch::channel(false);
    let status = Arc::new(Mutex::new(Status {
        backend,
        identity: identity.clone(),
        role: Role::Follower,
        holder: None,
    }));
    telemetry::election_started();
    let drain_ms = Arc::new(AtomicU64::new(0));
    let elector = Elector {
        holding,
        drain_ms: drain_ms.clone(),
        status: status.clone(),
        identity,
        timing,
    };
    let leadership = Leadership {
        holding: receiver,
        drain_ms,
    };
    (leadership, status, elector)
}

impl Elector {
    /// Opens the lease store with `open`, trying again with backoff (an
    /// unreachable store at start-up must not stop the bridge), then
    /// follows and holds the lease until `shutdown`.
    pub async fn open_and_hold<S, F, Fut>(self, open: F, shutdown: CancellationToken)
    where
        S: LeaseStore,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<S, LeaseError>>,
    {
        let mut retry = Backoff::new(Duration::from_millis(200), self.timing.renew_every);
        let store = loop {
            let opened = tokio::select! {
                opened = open() => opened,
                _ = shutdown.cancelled() => return,
            };
            match opened {
                Ok(store) => break store,
                Err(error) => {
                    let delay = retry.next_delay();
                    tracing::warn!(error = %error, delay_ms = delay.as_millis() as u64, "cannot open the notifier lease; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        self.hold(store, shutdown).await
    }
}

/// This replica's name in the lease: the configured one, else the pod's
/// or the host's name with the process id (two bridges on one host differ).
pub fn identity(configured: Option<&str>) -> String {
    if let Some(name) = configured.filter(|name| !name.is_empty()) {
        return name.to_owned();
    }
    let host = ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty())
        .unwrap_or_else(hostname);
    format!("{host}/{}", std::process::id())
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return "unknown-host".to_owned();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

impl Elector {
    /// The election loop over `store`: follow until the lease is free, hold
    /// it while it can be renewed in time, and release it at shutdown.
    pub async fn hold<S: LeaseStore>(self, mut store: S, shutdown: CancellationToken) {
        self.run(&mut store, &shutdown).await
    }

    /// The loop of `hold`; the elector, and its `holding` with it, is
    /// dropped as it ends, before the store.
    async fn run<S: LeaseStore>(self, store: &mut S, shutdown: &CancellationToken) {
        let timing = self.timing;
        // When a holder was last seen (this replica or another; start-up
        // counts as seen): the time without one is exported, and alerted on
        // across the fleet.
        let mut holder_seen = Instant::now();
        loop {
            let sent = Instant::now();
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(timing.renew_every, store.acquire()) => attempt,
                _ = shutdown.cancelled() => return,
            };
            let wait = match attempt {
                Ok(Ok(Attempt::Held)) => {
                    let ended = self.lead(store, sent).await;
                    holder_seen = Instant::now();
                    match ended {
                        Ended::Released => {
                            // The notifier has let go of the socket (it drops
                            // its `Leadership` as it stops): the lease can go
                            // to the next holder at once.
                            release(store).await;
                            return;
                        }
                        Ended::Lost(error) => {
                            tracing::warn!(error = %error, "notifier lease lost; following");
                            timing.renew_every
                        }
                    }
                }
                Ok(Ok(Attempt::Taken { holder, free_in })) => {
                    holder_seen = Instant::now();
                    self.set(Role::Follower, Some(holder));
                    // Try again when the holder's lease can have run out, but no
                    // later than the next beat.
                    free_in.map_or(timing.renew_every, |free_in| {
                        free_in.min(timing.renew_every) + Duration::from_millis(20)
                    })
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "cannot ask for the notifier lease");
                    timing.renew_every
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = timing.renew_every.as_millis() as u64,
                        "the lease store did not answer in time"
                    );
                    Duration::ZERO
                }
            };
            telemetry::election_without_holder(holder_seen.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = store.released() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Holds the lease just taken (by a request sent at `sent`) while it
    /// is renewed in time, then lets go of it: the notifier learns that it
    /// no longer holds it, and how long it may drain its socket.
    async fn lead<S: LeaseStore>(&self, store: &mut S, sent: Instant) -> Ended {
        let timing = self.timing;
        self.set(Role::Holder, Some(self.identity.clone()));
        self.holding.send_replace(true);
        telemetry::election_role(true);
        tracing::info!(identity = %self.identity, backend = store.backend(), "holding the notifier lease");
        let ended = renew_while_valid(store, timing, timing.valid_until(sent), &self.holding).await;
        // Draining the socket is safe only while no other replica
        // can hold the lease.
        let drain = match &ended {
            Ended::Lost(LeaseError::Store(_)) => timing.margin() / 2,
            _ => Duration::ZERO,
        };
        self.drain_ms
            .store(drain.as_millis() as u64, Ordering::SeqCst);
        self.holding.send_replace(false);
        telemetry::election_role(false);
        self.set(Role::Follower, None);
        ended
    }

    /// Shows this replica's role and the holder it last saw.
    fn set(&self, role: Role, holder: Option<String>) {
        let mut status = self
            .status
            .lock()
            .expect("election status lock is never poisoned");
        status.role = role;
        status.holder = holder;
    }
}

/// Gives the lease up at once; a lease that cannot be released runs out
/// by itself.
async fn release<S: LeaseStore>(store: &mut S) {
    match store.release().await {
        Ok(()) => tracing::info!("notifier lease released"),
        Err(error) => {
            tracing::warn!(error = %error, "could not release the notifier lease; it runs out by itself")
        }
    }
}

enum Ended {
    /// The notifier stopped (shutdown) while the lease was still this
    /// replica's.
    Released,
    Lost(LeaseError),
}

/// Renews the lease every beat until a renewal is refused, the lease runs
/// out without one, or the notifier has stopped and let go of its socket.
/// At shutdown the notifier first closes and drains its socket, and the
/// lease is renewed meanwhile, so that it is released only after. A renewal
/// that fails is tried again on a quarter beat, never past `valid_until`.
async fn renew_while_valid<S: LeaseStore>(
    store: &mut S,
    timing: Timing,
    mut valid_until: Instant,
    holding: &watch::Sender<bool>,
) -> Ended {
    let mut next = Instant::now() + timing.renew_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(valid_until)) => {}
            _ = holding.closed() => return Ended::Released,
        }
        if Instant::now() >= valid_until {
            return Ended::Lost(LeaseError::Store(
                "no renewal succeeded before the lease ran out".to_owned(),
            ));
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout_at(valid_until, store.renew()).await;
        match renewed {
            Ok(Ok(())) => {
                valid_until = timing.valid_until(sent);
                next = sent + timing.renew_every;
                telemetry::election_renewed();
            }
            Ok(Err(lost @ LeaseError::Lost(_))) => return Ended::Lost(lost),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "notifier lease renewal failed; trying again");
                next = Instant::now() + timing.renew_every / 4;
            }
            Err(_) => {
                return Ended::Lost(LeaseError::Store(
                    "the renewal did not finish before the lease ran out".to_owned(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A store that answers from a script, and records when it was asked.
    struct Scripted {
        acquire: VecDeque<Result<Attempt, LeaseError>>,
        renew: VecDeque<Renewal>,
        released: Arc<Mutex<bool>>,
    }

    enum Renewal {
        Ok,
        Fail,
        Lost,
        /// Never answers.
        Hang,
    }

    impl LeaseStore for Scripted {
        async fn acquire(&mut self) -> Result<Attempt, LeaseError> {
            self.acquire
                .pop_front()
                .unwrap_or(Err(LeaseError::Store("script ended".to_owned())))
        }
        async fn renew(&mut self) -> Result<(), LeaseError> {
            match self.renew.pop_front().unwrap_or(Renewal::Hang) {
                Renewal::Ok => Ok(()),
                Renewal::Fail => Err(LeaseError::Store("unreachable".to_owned())),
                Renewal::Lost => Err(LeaseError::Lost("other".to_owned())),
                Renewal::Hang => std::future::pending().await,
            }
        }
        async fn release(&mut self) -> Result<(), LeaseError> {
            *self.released.lock().unwrap() = true;
            Ok(())
        }
        async fn released(&mut self) {
            std::future::pending().await
        }
        fn backend(&self) -> &'static str {
            "script"
        }
    }

    /// An election over `store`, its loop not yet spawned.
    fn start(
        store: Scripted,
        timing: Timing,
        identity: String,
        shutdown: CancellationToken,
    ) -> (Leadership, Arc<Mutex<Status>>, impl Future<Output = ()>) {
        let (leadership, status, elector) = elector("script", identity, timing);
        (leadership, status, elector.hold(store, shutdown))
    }

    /// Runs an election over `store` until this replica took the lease and
    /// lost it again: how long it held it, and its leadership then.
    async fn held_for(store: Scripted) -> (Duration, Leadership, Arc<Mutex<Status>>) {
        let shutdown = CancellationToken::new();
        let (mut leadership, status, task) = start(store, TIMING, "me".to_owned(), shutdown);
        tokio::spawn(task);
        leadership.acquired().await;
        let taken = Instant::now();
        assert_eq!(status.lock().unwrap().role, Role::Holder);
        leadership.lost().await;
        (taken.elapsed(), leadership, status)
    }

    const TIMING: Timing = Timing {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_secs(2),
    };

    fn scripted(
        acquire: Vec<Result<Attempt, LeaseError>>,
        renew: Vec<Renewal>,
    ) -> (Scripted, Arc<Mutex<bool>>) {
        let released = Arc::new(Mutex::new(false));
        (
            Scripted {
                acquire: acquire.into(),
                renew: renew.into(),
                released: released.clone(),
            },
            released,
        )
    }

    /// A holder whose renewals stop answering stops holding at the start of
    /// its last successful renewal plus the time to live less the margin,
    /// not later.
    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_renew_stops_before_its_lease_runs_out() {
        let (store, _) = scripted(vec![Ok(Attempt::Held)], vec![Renewal::Ok, Renewal::Fail]);
        let (held_for, leadership, status) = held_for(store).await;
        // Renewed at +2 s; the lease is valid until 2 + 10 - 2 = 10 s.
        assert!(
            held_for <= Duration::from_secs(10) && held_for >= Duration::from_millis(9_900),
            "{held_for:?}"
        );
        assert_eq!(status.lock().unwrap().role, Role::Follower);
        // Nobody else can hold it yet: the socket may drain for half the margin.
        assert_eq!(leadership.drain(), TIMING.margin() / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_is_given_up_at_the_deadline() {
        let (store, _) = scripted(vec![Ok(Attempt::Held)], vec![Renewal::Hang]);
        let (held_for, _, _) = held_for(store).await;
        assert!(held_for <= TIMING.ttl - TIMING.margin());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_renewal_ends_holding_at_once() {
        let (store, _) = scripted(vec![Ok(Attempt::Held)], vec![Renewal::Ok, Renewal::Lost]);
        let (held_for, leadership, _) = held_for(store).await;
        // The second renewal, at +4 s, was refused.
        assert_eq!(held_for, Duration::from_secs(4));
        // Another replica holds it: the socket closes without draining.
        assert_eq!(leadership.drain(), Duration::ZERO);
    }

    /// A follower tries again when the holder's lease can have run out.
    #[tokio::test(start_paused = true)]
    async fn a_follower_takes_over_when_the_lease_runs_out() {
        let (store, _) = scripted(
            vec![
                Ok(Attempt::Taken {
                    holder: "other".to_owned(),
                    free_in: Some(Duration::from_millis(700)),
                }),
                Ok(Attempt::Held),
            ],
            Vec::new(),
        );
        let shutdown = CancellationToken::new();
        let (mut leadership, _, task) = start(store, TIMING, "me".to_owned(), shutdown.clone());
        let started = Instant::now();
        tokio::spawn(task);
        leadership.acquired().await;
        assert_eq!(started.elapsed(), Duration::from_millis(720));
        shutdown.cancel();
    }

    /// At shutdown the holder keeps renewing until the notifier has closed
    /// its socket, and only then releases the lease.
    #[tokio::test(start_paused = true)]
    async fn at_shutdown_the_lease_is_renewed_until_the_notifier_lets_go() {
        let renewals = (0..10).map(|_| Renewal::Ok).collect();
        let (store, released) = scripted(vec![Ok(Attempt::Held)], renewals);
        let shutdown = CancellationToken::new();
        let (mut leadership, _, task) = start(store, TIMING, "me".to_owned(), shutdown.clone());
        let task = tokio::spawn(task);
        leadership.acquired().await;
        shutdown.cancel();
        // The notifier drains for longer than the lease would last unrenewed.
        tokio::time::sleep(TIMING.ttl).await;
        assert!(leadership.is_held());
        assert!(!*released.lock().unwrap());
        drop(leadership);
        task.await.unwrap();
        assert!(*released.lock().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_a_held_lease() {
        let (store, released) = scripted(vec![Ok(Attempt::Held)], vec![Renewal::Ok]);
        let shutdown = CancellationToken::new();
        let (mut leadership, _, task) = start(store, TIMING, "me".to_owned(), shutdown.clone());
        let task = tokio::spawn(task);
        leadership.acquired().await;
        shutdown.cancel();
        // The notifier stops: its leadership goes with it.
        drop(leadership);
        task.await.unwrap();
        assert!(*released.lock().unwrap());
    }
}
