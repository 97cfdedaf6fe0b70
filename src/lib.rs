//! fishjam-bridge: Fishjam server notifications in, JSON events out to the
//! message queues, acknowledged end to end.
//!
//! `start` builds the parts from a validated `Config`, binds the listeners,
//! spawns the tasks and returns a `Bridge`; `Bridge::wait` returns once the
//! shutdown token was cancelled and the pipeline drained (or the drain timed
//! out). See ARCHITECTURE.md for the codemap.

pub mod activity;
pub mod admin;
pub mod admission;
pub mod backoff;
pub mod config;
pub mod core;
pub mod dead_letter;
pub mod dedup;
pub mod election;
pub mod fanout;
pub mod fishjam;
pub mod lag;
pub mod lane;
pub mod listener;
pub mod probe;
pub mod reconcile;
pub mod redrive;
pub mod settings;
pub mod simulator;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod systemd;
pub mod tap;
pub mod telemetry;
pub mod tls;
pub mod top;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::admission::Admission;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::fanout::{Fanout, InFlight};
use crate::lane::LaneOptions;
use crate::sinks::{Publish, Sink, SinkHealth};

/// A running bridge.
pub struct Bridge {
    /// Where webhooks are accepted, when enabled.
    pub webhook_addr: Option<SocketAddr>,
    /// Where /metrics, /healthz and /readyz are served, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub readiness: Readiness,
    fatal: Fatal,
    task: JoinHandle<anyhow::Result<DrainReport>>,
}

/// An error a task met that must end the bridge (refused credentials): the
/// task records it and cancels the shutdown token; `Bridge::wait` returns it.
#[derive(Debug, Clone, Default)]
pub struct Fatal(Arc<std::sync::Mutex<Option<String>>>);

impl Fatal {
    pub fn set(&self, error: String, shutdown: &CancellationToken) {
        *self.0.lock().expect("never poisoned") = Some(error);
        shutdown.cancel();
    }

    fn take(&self) -> Option<String> {
        self.0.lock().expect("never poisoned").take()
    }
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

fn acceptor(
    key: &str,
    tls: &Option<tls::ServerTlsConfig>,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    tls.as_ref()
        .map(|tls| tls.acceptor().with_context(|| key.to_owned()))
        .transpose()
}

/// Serves `router` on `listener` with `limits`, over TLS when there is an
/// acceptor, until `stop` completes.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: listener::Limits,
    name: &'static str,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener::Listener::new(listener, tls, limits, name)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// Starts the bridge. The listeners are bound before this returns; sinks
/// connect in the background (readiness says when), so a broker that is down
/// at start-up delays events rather than stopping the bridge.
pub async fn start(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Bridge> {
    let readiness = Readiness::default();
    let refresh = admin::Refresh::default();
    readiness.register("running");
    let fatal = Fatal::default();
    let tasks = TaskTracker::new();

    telemetry::tap_registered();
    let tap = (config.admin.enabled && config.admin.tap).then(tap::Tap::default);
    let admin_addr = if config.admin.enabled {
        let listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot bind admin.listen {}", config.admin.listen))?;
        let addr = listener.local_addr()?;
        let router = admin::router(metrics, readiness.clone(), tap.clone(), refresh.clone());
        let tls = acceptor("admin.tls", &config.admin.tls)?;
        // Scrapes and probes: a few connections, never a flood.
        let limits = listener::Limits {
            max_connections: 256,
            idle_timeout: config.webhook.idle_timeout,
            handshake_timeout: std::time::Duration::from_secs(10),
        };
        // The admin listener outlives the drain, so metrics stay scrapable;
        // it ends with the process.
        tokio::spawn(async move {
            let forever = std::future::pending::<()>();
            if let Err(error) = serve(listener, tls, limits, "admin", router, forever).await {
                tracing::error!(error = %error, "admin listener failed");
            }
        });
        tracing::info!(%addr, https = config.admin.tls.is_some(), "admin listening");
        Some(addr)
    } else {
        None
    };

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
    telemetry::spool_registered();
    let spool = config
        .spool
        .options()
        .map(|options| {
            let options = spool::Options {
                replay_notifier: config.election.backend == config::ElectionBackend::None,
                ..options
            };
            spool::Spool::open(&options, &fanout.sink_names())
        })
        .transpose()?;
    if let Some(spool) = &spool {
        // With room for the largest body the bridge takes, a webhook can be
        // taken durably whatever the sinks do.
        let spool = spool.clone();
        let largest = config.largest_body();
        readiness.set_spool(move || spool.has_room(largest));
    }
    let admission = Admission::new(fanout, spool.clone());
    let lane_options = LaneOptions {
        max_batch: config.pipeline.max_batch,
        retry_initial_backoff: config.pipeline.retry_initial_backoff,
        retry_max_backoff: config.pipeline.retry_max_backoff,
        dead_letters: dead_letter::DeadLetters::new(config.pipeline.dead_letter_path.clone()),
    };
    let sink_tasks = TaskTracker::new();
    for (index, (sink_config, sink_lanes)) in config.sinks.iter().cloned().zip(lanes).enumerate() {
        let health = SinkHealth::new(sink_config.name(), readiness.clone());
        let options = lane_options.clone();
        let progress = in_flight.sink(index);
        let retry = Backoff::new(
            config.pipeline.retry_initial_backoff,
            config.pipeline.retry_max_backoff,
        );
        sink_tasks.spawn(async move {
            let sink = Arc::new(connect_sink(&sink_config, &health, retry).await);
            let lane_tasks = TaskTracker::new();
            for lane in sink_lanes {
                lane_tasks.spawn(lane::run_lane(
                    sink.clone(),
                    lane,
                    options.clone(),
                    progress.clone(),
                ));
            }
            lane_tasks.close();
            lane_tasks.wait().await;
            if let Err(error) = sink.close().await {
                tracing::error!(sink = sink.name(), error = %telemetry::Chain(&error), "closing the sink failed");
            }
            health.set(false);
            tracing::info!(sink = sink.name(), "sink closed");
        });
    }
    sink_tasks.close();

    let fishjam_id: Arc<str> = Arc::from(config.fishjam.id.as_str());
    let webhook_addr = if config.webhook.enabled {
        if config.webhook.secret.is_none() {
            tracing::warn!(
                "webhook.secret is not set: webhooks are accepted unsigned; set it to the secret from the Fishjam dashboard"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.webhook.listen)
            .await
            .with_context(|| format!("cannot bind webhook.listen {}", config.webhook.listen))?;
        let addr = listener.local_addr()?;
        let router = sources::webhook::router(
            &config.webhook,
            fishjam_id.clone(),
            admission.clone(),
            spool
                .clone()
                .map(|spool| (spool, config.spool.engage_after)),
        );
        let tls = acceptor("webhook.tls", &config.webhook.tls)?;
        let limits = listener::Limits {
            max_connections: config.webhook.max_connections,
            idle_timeout: config.webhook.idle_timeout,
            handshake_timeout: config.webhook.request_timeout,
        };
        let stop = shutdown.clone();
        let failed = shutdown.clone();
        tasks.spawn(async move {
            let stopped = stop.cancelled_owned();
            let served = serve(listener, tls, limits, "webhook", router, stopped).await;
            if let Err(error) = served {
                tracing::error!(error = %error, "webhook listener failed");
                failed.cancel();
            }
            tracing::info!("webhook listener stopped");
        });
        tracing::info!(
            %addr,
            path = %config.webhook.path,
            https = config.webhook.tls.is_some(),
            "webhook listening"
        );
        Some(addr)
    } else {
        None
    };
    if config.notifier.enabled {
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
            fishjam_id: fishjam_id.clone(),
            config: config.notifier.clone(),
            admission: admission.clone(),
            readiness: readiness.clone(),
            fatal: fatal.clone(),
            rest: fishjam::rest_client(config.notifier.connect_timeout, extra_roots.as_ref())?,
            tls: extra_roots
                .as_ref()
                .map(tls::ExtraRoots::rustls)
                .transpose()
                .context("notifier.ca_file")?,
            leadership: elect(&config, fishjam_id.clone(), &readiness, &tasks, &shutdown)?,
            unacknowledged: Default::default(),
        };
        // Shown in /readyz and /status either way; required only when asked.
        readiness.register_as(
            sources::notifier::CHECK,
            if config.notifier.required_for_readiness {
                admin::Role::Required
            } else {
                admin::Role::Info
            },
        );
        telemetry::notifier_registered();
        tasks.spawn(source.run(shutdown.clone()));
    }
    if let Some(spool) = &spool {
        for sink in 0..config.sinks.len() {
            tasks.spawn(spool::replay(
                spool.clone(),
                sink,
                admission.fanout().clone(),
                in_flight.clone(),
                fishjam_id.clone(),
                shutdown.clone(),
            ));
        }
    }
    let lag = lag::Lag::new(
        admission.fanout().sink_names(),
        in_flight.clone(),
        spool.clone(),
    );
    // Exported once now, so that every series exists from the start, and
    // before every scrape.
    lag.export();
    refresh.add({
        let lag = lag.clone();
        move || lag.export()
    });
    readiness.set_detail("lag", {
        let lag = lag.clone();
        move || lag.report()
    });
    tasks.spawn(lag.clone().run(shutdown.clone()));
    tasks.close();
    // From here on only the sources hold the fan-out: when they stop, the
    // lanes close and the sinks drain.
    drop(admission);
    readiness.set("running", true);

    let drain_timeout = config.pipeline.drain_timeout;
    let state = readiness.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        state.set("running", false);
        tracing::info!(
            in_flight = in_flight.current(),
            "shutting down: sources stop, in-flight events drain"
        );
        let report = drain(tasks, sink_tasks, in_flight, drain_timeout).await;
        if let Some(spool) = spool {
            // What the sinks acknowledged during the drain leaves the spool;
            // the rest is replayed by the next run.
            spool.close().await;
        }
        report
    });

    Ok(Bridge {
        webhook_addr,
        admin_addr,
        readiness,
        fatal,
        task,
    })
}

/// The notifier's leadership: always held without an election; with one,
/// followed from a lease store opened in the background (the store being
/// unreachable at start-up must not stop the webhooks).
fn elect(
    config: &Config,
    fishjam_id: Arc<str>,
    readiness: &Readiness,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<election::Leadership> {
    let backend = match config.election.backend {
        config::ElectionBackend::None => return Ok(election::Leadership::always()),
        config::ElectionBackend::Nats => "nats",
        config::ElectionBackend::Kubernetes => "kubernetes",
    };
    let identity = election::identity(config.election.identity.as_deref());
    let timing = election::Timing {
        ttl: config.election.ttl,
        renew_every: config.election.renew_every,
    };
    let (leadership, status, elector) = election::elector(backend, identity.clone(), timing);
    readiness.set_detail("election", move || {
        serde_json::to_value(
            &*status
                .lock()
                .expect("election status lock is never poisoned"),
        )
        .unwrap_or_default()
    });
    tracing::info!(%identity, backend, "following the notifier election");
    let shutdown = shutdown.clone();
    match config.election.backend {
        config::ElectionBackend::None => unreachable!("returned above"),
        config::ElectionBackend::Nats => {
            let sink = config
                .election
                .nats_sink(&config.sinks)
                .map_err(anyhow::Error::msg)?
                .clone();
            let settings = config.election.clone();
            tasks.spawn(async move {
                let open = || election::nats::connect(&sink, &settings, &fishjam_id, &identity);
                elector.open_and_hold(open, shutdown).await
            });
        }
        config::ElectionBackend::Kubernetes => {
            let settings = config.election.kubernetes.clone();
            tasks.spawn(async move {
                let open = || async {
                    let target =
                        election::kubernetes::Target::from_settings(&settings, timing.renew_every)?;
                    Ok(election::kubernetes::KubeLease::new(
                        target, &identity, timing.ttl,
                    ))
                };
                elector.open_and_hold(open, shutdown).await
            });
        }
    }
    Ok(leadership)
}

async fn connect_sink(config: &sinks::SinkConfig, health: &SinkHealth, mut retry: Backoff) -> Sink {
    loop {
        match Sink::connect(config, health.clone()).await {
            Ok(sink) => {
                tracing::info!(sink = config.name(), "sink connected");
                return sink;
            }
            Err(error) => {
                let delay = retry.next_delay();
                tracing::warn!(
                    sink = config.name(),
                    error = %telemetry::Chain(&error),
                    attempt = retry.attempts(),
                    delay_ms = delay.as_millis() as u64,
                    "sink cannot connect; retrying"
                );
                health.set(false);
                tokio::time::sleep(delay).await;
            }
        }
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
