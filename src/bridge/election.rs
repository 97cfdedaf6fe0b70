//! The notifier's leadership: always held without an election; with one,
//! followed from a lease store opened in the background (the store being
//! unreachable at start-up must not stop the webhooks).

use super::Wiring;
use crate::config::ElectionBackend;
use crate::election::{self, kubernetes, Leadership};

pub(super) fn leadership(wiring: &Wiring) -> anyhow::Result<Leadership> {
    let config = &wiring.config;
    let backend = match config.election.backend {
        ElectionBackend::None => return Ok(Leadership::always()),
        ElectionBackend::Nats => "nats",
        ElectionBackend::Kubernetes => "kubernetes",
    };
    let identity = election::identity(config.election.identity.as_deref());
    let timing = election::Timing {
        ttl: config.election.ttl,
        renew_every: config.election.renew_every,
    };
    let (leadership, status, elector) = election::elector(backend, identity.clone(), timing);
    wiring.readiness.set_detail("election", move || {
        serde_json::to_value(
            &*status
                .lock()
                .expect("election status lock is never poisoned"),
        )
        .unwrap_or_default()
    });
    tracing::info!(%identity, backend, "following the notifier election");
    let shutdown = wiring.shutdown.clone();
    let fishjam_id = wiring.fishjam_id.clone();
    if config.election.backend == ElectionBackend::Nats {
        let sink = config.election.nats_sink(&config.sinks)?.clone();
        let settings = config.election.clone();
        wiring.tasks.spawn(async move {
            let open = || election::nats::connect(&sink, &settings, &fishjam_id, &identity);
            elector.open_and_hold(open, shutdown).await
        });
    } else {
        let settings = config.election.kubernetes.clone();
        wiring.tasks.spawn(async move {
            let open = || async {
                let target = kubernetes::Target::from_settings(&settings, timing.renew_every)?;
                Ok(kubernetes::KubeLease::new(target, &identity, timing.ttl))
            };
            elector.open_and_hold(open, shutdown).await
        });
    }
    Ok(leadership)
}
