//! Wiring: `start` builds the parts from a validated `Config` in named
//! steps (the admin listener, fan-out and the spool, the sinks and their
//! lanes, the webhook listener, the notifier with its election, the spool's
//! replays, the lag export), then returns a `Bridge`; `Bridge::wait` returns
//! once the shutdown token was cancelled and the pipeline drained (or the
//! drain timed out). `run` holds the commands that run a bridge until a
//! signal stops it.

pub mod drain;
mod election;
mod listeners;
pub mod run;
mod sinks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::tap;
use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::net::tls;
use crate::pipeline::admission::Admission;
use crate::pipeline::fanout::{self, Fanout, InFlight, LaneReceiver};
use crate::pipeline::spool::{self, Spool};
use crate::pipeline::{dedup, lag};
use crate::sources::{self, fishjam, Fatal};
use crate::telemetry;

/// A running bridge.
pub struct Bridge {
    /// Where webhooks are accepted, when enabled.
    pub webhook_addr: Option<SocketAddr>,
    /// Where /metrics, /healthz and /readyz are served, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub readiness: Readiness,
    /// The spool, when it is on, and what it held when it was opened,
    /// before any replay ran.
    spool: Option<(Arc<Spool>, Vec<spool::Lag>)>,
    fatal: Fatal,
    task: JoinHandle<anyhow::Result<DrainReport>>,
}

/// What shutdown achieved.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Events still unacknowledged when the drain timeout passed.
    pub undelivered: usize,
}

impl Bridge {
    /// Waits for shutdown and the drain.
    pub async fn wait(self) -> anyhow::Result<DrainReport> {
        let drained = self.task.await.context("the bridge task panicked")?;
        match self.fatal.take() {
            Some(error) => Err(anyhow::anyhow!(error)),
            None => drained,
        }
    }
}

/// What every step of `start` shares.
struct Wiring {
    config: Config,
    readiness: Readiness,
    fatal: Fatal,
    /// The sources and the tasks beside them: the drain waits for them
    /// before the sinks.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    fishjam_id: Arc<str>,
    /// Listening sockets a supervisor handed over (socket activation).
    inherited: std::sync::Mutex<crate::net::activation::Inherited>,
}

/// Starts the bridge. The listeners are bound before this returns; sinks
/// connect in the background (readiness says when), so a broker that is down
/// at start-up delays events rather than stopping the bridge.
pub async fn start(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Bridge> {
    let wiring = Wiring {
        fishjam_id: Arc::from(config.fishjam.id.as_str()),
        config,
        readiness: Readiness::default(),
        fatal: Fatal::default(),
        tasks: TaskTracker::new(),
        shutdown,
        inherited: std::sync::Mutex::new(crate::net::activation::Inherited::from_env()),
    };
    let running = wiring.readiness.register("running");
    let refresh = admin::Refresh::default();
    telemetry::tap_registered();
    let tap = (wiring.config.admin.enabled && wiring.config.admin.tap).then(tap::Tap::default);
    let admin_addr = listeners::admin(&wiring, metrics, tap.clone(), refresh.clone()).await?;
    let (fanout, lanes, in_flight) = wiring.fanout(tap)?;
    let spool = wiring.spool(&fanout)?;
    let spooled = spool.as_ref().map(|spool| (spool.clone(), spool.lag()));
    let admission = Admission::new(fanout, spool.clone());
    let sink_tasks = sinks::spawn(&wiring, lanes, &in_flight);
    let webhook_addr = listeners::webhook(&wiring, &admission, &spool).await?;
    if wiring.config.notifier.enabled {
        wiring.notifier(&admission)?;
    }
    if let Some(spool) = &spool {
        wiring.replays(spool, &admission, &in_flight);
    }
    wiring.lag(&admission, &in_flight, &spool, &refresh);
    wiring.tasks.close();
    // From here on only the sources hold the fan-out: when they stop, the
    // lanes close and the sinks drain.
    drop(admission);
    running.set(true);
    let (readiness, fatal) = (wiring.readiness.clone(), wiring.fatal.clone());
    let task = tokio::spawn(wiring.shut_down(running, sink_tasks, in_flight, spool));
    Ok(Bridge {
        webhook_addr,
        admin_addr,
        readiness,
        spool: spooled,
        fatal,
        task,
    })
}

impl Wiring {
    /// Fan-out over the configured sinks, with deduplication when both
    /// sources are on, and the tap when it is served.
    fn fanout(
        &self,
        tap: Option<tap::Tap>,
    ) -> anyhow::Result<(Fanout, Vec<Vec<LaneReceiver>>, InFlight)> {
        let config = &self.config;
        let sinks: Vec<fanout::SinkSpec> = config
            .sinks
            .iter()
            .map(|s| {
                Ok(fanout::SinkSpec {
                    name: s.name().to_owned(),
                    lanes: s.lanes(config.pipeline.lanes),
                    route: s.route().filter()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // Only with both sources can one notification arrive twice.
        let dedup = (config.webhook.enabled && config.notifier.enabled).then(|| {
            telemetry::dedup_registered();
            dedup::Deduplicator::new(config.dedup.window, config.dedup.max_entries)
        });
        let (fanout, lanes, in_flight) = Fanout::new(
            &sinks,
            config.pipeline.max_in_flight_events,
            fanout::BurstyLimit {
                max_in_flight: config.pipeline.max_in_flight_bursty_events,
                when_full: config.pipeline.bursty_when_full,
            },
            dedup,
        );
        let fanout = match tap {
            Some(tap) => fanout.with_tap(tap),
            None => fanout,
        };
        Ok((fanout, lanes, in_flight))
    }

    /// The spool, when on; readiness then counts its room as the sinks'.
    fn spool(&self, fanout: &Fanout) -> anyhow::Result<Option<Arc<Spool>>> {
        let config = &self.config;
        telemetry::spool_registered();
        let spool = config
            .spool
            .options()
            .map(|options| {
                let options = spool::Options {
                    replay_notifier: config.election.backend
                        == crate::config::ElectionBackend::None,
                    ..options
                };
                Spool::open(&options, &fanout.sink_names())
            })
            .transpose()?;
        if let Some(spool) = &spool {
            // With room for the largest body the bridge takes, a webhook can
            // be taken durably whatever the sinks do.
            let spool = spool.clone();
            let largest = config.largest_body();
            self.readiness.set_spool(move || spool.has_room(largest));
        }
        Ok(spool)
    }

    /// The notifier source, following the election when there is one.
    fn notifier(&self, admission: &Admission) -> anyhow::Result<()> {
        let config = &self.config;
        let extra_roots = config
            .notifier
            .ca_file
            .as_deref()
            .map(tls::ExtraRoots::load)
            .transpose()
            .context("notifier.ca_file")?;
        let source = sources::notifier::NotifierSource {
            url: fishjam::notifier_url(&config.fishjam.id).context("fishjam.id")?,
            token: config
                .fishjam
                .management_token
                .clone()
                .context("notifier.enabled needs fishjam.management_token")?,
            fishjam_id: self.fishjam_id.clone(),
            config: config.notifier.clone(),
            admission: admission.clone(),
            // Shown in /readyz and /status either way; required only when
            // asked.
            check: self.readiness.register_as(
                sources::notifier::CHECK,
                if config.notifier.required_for_readiness {
                    admin::Role::Required
                } else {
                    admin::Role::Info
                },
            ),
            fatal: self.fatal.clone(),
            rest: fishjam::rest_client(config.notifier.connect_timeout, extra_roots.as_ref())?,
            tls: extra_roots
                .as_ref()
                .map(tls::ExtraRoots::rustls)
                .transpose()
                .context("notifier.ca_file")?,
            leadership: election::leadership(self)?,
            unacknowledged: Default::default(),
        };
        telemetry::notifier_registered();
        self.tasks.spawn(source.run(self.shutdown.clone()));
        Ok(())
    }

    /// One replay of the spool per sink.
    fn replays(&self, spool: &Arc<Spool>, admission: &Admission, in_flight: &InFlight) {
        for sink in 0..self.config.sinks.len() {
            self.tasks.spawn(spool::replay(
                spool.clone(),
                sink,
                admission.fanout().clone(),
                in_flight.clone(),
                self.fishjam_id.clone(),
                self.shutdown.clone(),
            ));
        }
    }

    /// Each sink's lag: exported every second and before every scrape, and
    /// shown by /readyz and /status.
    fn lag(
        &self,
        admission: &Admission,
        in_flight: &InFlight,
        spool: &Option<Arc<Spool>>,
        refresh: &admin::Refresh,
    ) {
        let lag = lag::Lag::new(
            admission.fanout().sink_names(),
            in_flight.clone(),
            spool.clone(),
        );
        // Exported once now, so that every series exists from the start.
        lag.export();
        refresh.add({
            let lag = lag.clone();
            move || lag.export()
        });
        self.readiness.set_detail("lag", {
            let lag = lag.clone();
            move || lag.report()
        });
        self.tasks.spawn(lag.run(self.shutdown.clone()));
    }

    /// Waits for the shutdown token, then drains: the sources stop, the
    /// lanes deliver what they hold, the sinks close, the spool writes its
    /// last watermark.
    async fn shut_down(
        self,
        running: admin::Check,
        sink_tasks: TaskTracker,
        in_flight: InFlight,
        spool: Option<Arc<Spool>>,
    ) -> anyhow::Result<DrainReport> {
        self.shutdown.cancelled().await;
        running.set(false);
        tracing::info!(
            in_flight = in_flight.current(),
            "shutting down: sources stop, in-flight events drain"
        );
        let timeout = self.config.pipeline.drain_timeout;
        let report = drain(self.tasks, sink_tasks, in_flight, timeout).await;
        if let Some(spool) = spool {
            // What the sinks acknowledged during the drain leaves the spool;
            // the rest is replayed by the next run.
            spool.close().await;
        }
        report
    }
}

async fn drain(
    sources: TaskTracker,
    sinks: TaskTracker,
    in_flight: InFlight,
    timeout: std::time::Duration,
) -> anyhow::Result<DrainReport> {
    let drained = tokio::time::timeout(timeout, async {
        sources.wait().await;
        sinks.wait().await;
    })
    .await;
    let undelivered = in_flight.current();
    match drained {
        Ok(()) => tracing::info!("drained: every accepted event was acknowledged"),
        Err(_) => tracing::error!(
            undelivered,
            timeout_ms = timeout.as_millis() as u64,
            "drain timed out; events still in flight are not delivered"
        ),
    }
    Ok(DrainReport { undelivered })
}
