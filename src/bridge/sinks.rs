//! Each sink's task: connect (retrying until it can; readiness says when),
//! run its lanes, and once they are drained, close (flush) the sink.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::Wiring;
use crate::net::backoff::Backoff;
use crate::pipeline::dead_letter::DeadLetters;
use crate::pipeline::fanout::{InFlight, LaneReceiver};
use crate::pipeline::lane::{self, LaneOptions};
use crate::sinks::{Publish, Sink, SinkConfig, SinkHealth};
use crate::telemetry;

/// Spawns one task per sink, each with its lanes; the tracker is done when
/// every sink is closed.
pub(super) fn spawn(
    wiring: &Wiring,
    lanes: Vec<Vec<LaneReceiver>>,
    in_flight: &InFlight,
) -> TaskTracker {
    let pipeline = &wiring.config.pipeline;
    let lane_options = LaneOptions {
        max_batch: pipeline.max_batch,
        retry_initial_backoff: pipeline.retry_initial_backoff,
        retry_max_backoff: pipeline.retry_max_backoff,
        dead_letters: DeadLetters::new(pipeline.dead_letter_path.clone()),
    };
    let sink_tasks = TaskTracker::new();
    for (index, (config, sink_lanes)) in wiring.config.sinks.iter().cloned().zip(lanes).enumerate()
    {
        let health = SinkHealth::new(config.name(), wiring.readiness.clone());
        let options = lane_options.clone();
        let progress = in_flight.sink(index);
        let retry = Backoff::new(pipeline.retry_initial_backoff, pipeline.retry_max_backoff);
        sink_tasks.spawn(async move {
            let sink = Arc::new(connect(&config, &health, retry).await);
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
    sink_tasks
}

async fn connect(config: &SinkConfig, health: &SinkHealth, mut retry: Backoff) -> Sink {
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
