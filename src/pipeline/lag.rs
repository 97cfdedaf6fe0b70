//! How far each sink is behind: the events it has not acknowledged (spooled
//! behind its cursor, or held in its bound in memory, whichever is more:
//! counted per body, so events its route leaves out count too), the bytes
//! of those spooled, and how long the oldest has waited. Exported as metrics every
//! second and shown under `lag` in `/readyz` and `/status`, so the sink
//! that holds a spool up is named.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pipeline::fanout::InFlight;
use crate::pipeline::spool::Spool;
use crate::telemetry;

/// One sink's lag at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkLag {
    pub events: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// With a spool: below it, the sink acknowledged every spooled body.
    pub cursor: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Lag {
    sinks: Arc<[Arc<str>]>,
    in_flight: InFlight,
    spool: Option<Arc<Spool>>,
    /// Held while the gauges are read and set: the second-by-second export
    /// and a scrape's must not interleave, or the older reading could be
    /// the one set last.
    exporting: Arc<std::sync::Mutex<()>>,
}

impl Lag {
    /// `sinks` in fan-out's order.
    pub fn new(sinks: Vec<Arc<str>>, in_flight: InFlight, spool: Option<Arc<Spool>>) -> Lag {
        Lag {
            sinks: sinks.into(),
            in_flight,
            spool,
            exporting: Arc::default(),
        }
    }

    /// Each sink's lag, in fan-out's order.
    pub fn measure(&self) -> Vec<(Arc<str>, SinkLag)> {
        let spooled = self.spool.as_ref().map(|spool| spool.lag());
        self.sinks
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let held = self.in_flight.of(index) as u64;
                let spooled = spooled.as_ref().map(|lag| lag[index]);
                let in_memory = if held > 0 {
                    self.in_flight.since_progress(index)
                } else {
                    Duration::ZERO
                };
                let oldest = spooled.and_then(|lag| lag.oldest).unwrap_or(in_memory);
                // What a replay submitted is both behind the cursor and in
                // the bound: the larger of the two, not their sum.
                let lag = SinkLag {
                    events: held.max(spooled.map_or(0, |lag| lag.events)),
                    bytes: spooled.map_or(0, |lag| lag.bytes),
                    seconds: oldest.as_secs_f64(),
                    cursor: spooled.map(|lag| lag.cursor),
                };
                (name.clone(), lag)
            })
            .collect()
    }

    /// For `/readyz` and `/status`: each sink by name with its lag.
    pub fn report(&self) -> serde_json::Value {
        let sinks = self.measure().into_iter().map(|(name, lag)| {
            let mut entry = serde_json::json!({
                "events": lag.events,
                "bytes": lag.bytes,
                "seconds": (lag.seconds * 1000.0).round() / 1000.0,
            });
            if let Some(cursor) = lag.cursor {
                entry["spool_cursor"] = cursor.into();
            }
            (name.to_string(), entry)
        });
        serde_json::Value::Object(sinks.collect())
    }

    /// Sets the lag metrics, and the events in flight, to what they are now.
    pub fn export(&self) {
        let _exporting = self.exporting.lock().expect("never poisoned");
        self.in_flight.report();
        for (name, lag) in self.measure() {
            telemetry::sink_lag(&name, lag.events, lag.bytes, lag.seconds, lag.cursor);
        }
    }

    /// Exports the lag every second until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.export(),
                () = shutdown.cancelled() => return,
            }
        }
    }
}
