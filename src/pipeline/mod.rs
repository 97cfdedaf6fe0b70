//! The delivery core: a body admitted whole or not at all (`admission`),
//! split into one part per sink and lane within each sink's bound
//! (`fanout`), published in order per room and retried (`lane`); beside it,
//! duplicate drops (`dedup`), room state (`activity`), how far each sink is
//! behind (`lag`), events refused for good (`dead_letter`); and the disk
//! spool that takes bodies when a sink is down or slow (`spool`).

pub mod activity;
pub mod admission;
pub mod dead_letter;
pub mod dedup;
pub mod fanout;
pub mod lag;
pub mod lane;
pub mod spool;

#[cfg(test)]
mod tests {
    use crate::admin::{router, Readiness, Refresh};
    use crate::pipeline::fanout::{BurstyLimit, Fanout, SinkSpec, WhenFull};
    use crate::telemetry;

    /// Two lanes that finish together each report what they read of the
    /// bound, and the later write can carry the older reading: a scrape
    /// must show the events in flight now, whatever was written last.
    #[test]
    fn a_scrape_shows_the_events_in_flight_now_not_the_last_report() {
        use tower::ServiceExt;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let scraped = metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let limit = BurstyLimit {
                    max_in_flight: 10,
                    when_full: WhenFull::Wait,
                };
                let (_fanout, _lanes, in_flight) =
                    Fanout::new(&[SinkSpec::all("a", 2)], 10, limit, None);
                // Nothing is in flight; a lane's late report says 3.
                telemetry::pipeline_in_flight(3);
                let refresh = Refresh::default();
                refresh.add(move || in_flight.report());
                let response = router(handle.clone(), Readiness::default(), None, refresh, None)
                    .oneshot(
                        axum::http::Request::get("/metrics")
                            .body(axum::body::Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                String::from_utf8(body.to_vec()).unwrap()
            })
        });
        let line = scraped
            .lines()
            .find(|l| l.starts_with("fishjam_bridge_pipeline_events_in_flight "))
            .unwrap_or_else(|| panic!("no gauge in {scraped}"));
        assert_eq!(line, "fishjam_bridge_pipeline_events_in_flight 0");
    }
}
