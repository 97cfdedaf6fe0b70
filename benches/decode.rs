//! Decode + normalize throughput on one core, for BENCHMARKS.md.
//!
//! `cargo bench --bench decode` measures single-notification bodies (Fishjam's
//! default) and 50-notification batches from the simulator's scenario, first
//! decode + normalize alone, then with the JSON serialization the pipeline
//! adds. One thread; the figure is the best of five rounds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::simulator::scenario::Scenario;
use fishjam_bridge::simulator::webhook::encode_body;
use prost::Message;

fn main() {
    let messages: Vec<_> = Scenario::new(42, 50).take(200_000).collect();
    let singles: Vec<Vec<u8>> = messages.iter().map(|m| m.encode_to_vec()).collect();
    let batches: Vec<Vec<u8>> = messages
        .chunks(50)
        .map(|chunk| encode_body(chunk.to_vec(), true).to_vec())
        .collect();
    let average = singles.iter().map(Vec::len).sum::<usize>() / singles.len();
    println!(
        "bodies: {} single (average {average} bytes), {} batches of 50",
        singles.len(),
        batches.len()
    );
    for (name, bodies) in [("single", &singles), ("batch of 50", &batches)] {
        let normalize = best_of(5, || run(bodies, false));
        let serialize = best_of(5, || run(bodies, true));
        println!(
            "{name:>12}: decode+normalize {:>10.0} events/s   decode+normalize+serialize {:>10.0} events/s",
            normalize, serialize
        );
    }
}

fn run(bodies: &[Vec<u8>], serialize: bool) -> (usize, Duration) {
    let origin = Origin {
        source: Source::Webhook,
        received_at: SystemTime::now(),
        fishjam_id: Arc::from("bench"),
        id_seed: 0,
    };
    let started = Instant::now();
    let mut events = 0;
    let mut bytes = 0;
    for body in bodies {
        let normalized = normalize_body(body, &origin).expect("scenario bodies decode");
        events += normalized.events.len();
        if serialize {
            for event in &normalized.events {
                bytes += event.to_json().len();
            }
        }
        std::hint::black_box(&normalized);
    }
    std::hint::black_box(bytes);
    (events, started.elapsed())
}

fn best_of(rounds: usize, mut f: impl FnMut() -> (usize, Duration)) -> f64 {
    (0..rounds)
        .map(|_| {
            let (events, took) = f();
            events as f64 / took.as_secs_f64()
        })
        .fold(0.0, f64::max)
}
