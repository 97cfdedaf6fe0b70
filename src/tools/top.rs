//! `fishjam-bridge top`: a live view of a running bridge in the terminal,
//! read from its admin listener (`/metrics` and `/status`) every second:
//! events per second by source and type, each sink (up or down, its rate,
//! backlog and lag, its spool cursor), acknowledgement latency, the spool,
//! the notifier, webhook answers by status, rooms and peers. Read-only. A
//! bridge that cannot be reached is shown as such and tried again.
//! Keys: q quits, p pauses, s changes how event types are sorted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event as Input, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use crate::telemetry;

/// One scrape of `/metrics`: each series (name and labels) and its value.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Reads Prometheus' text format; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Scrape {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                None => (head, BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.trim_end_matches('}');
                    let labels = rest
                        .split("\",")
                        .filter_map(|pair| {
                            let (key, value) = pair.split_once("=\"")?;
                            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (name, labels)
                }
            };
            series.push((name.to_owned(), labels, value));
        }
        Scrape { series }
    }

    /// The sum of `name`'s series whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Sums of `name` by the value of `label`.
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, value) in self.matching(name, &[]) {
            if let Some(key) = labels.get(label) {
                *out.entry(key.clone()).or_default() += value;
            }
        }
        out
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.series
            .iter()
            .filter(move |(n, labels, _)| {
                n == name
                    && wanted
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, labels, value)| (labels, *value))
    }
}

/// The `q` quantile of what a histogram observed between two scrapes, from
/// its cumulative buckets; None when it observed nothing.
pub fn quantile(before: &Scrape, now: &Scrape, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let counts = |scrape: &Scrape| scrape.by(&bucket, "le");
    let (before, now) = (counts(before), counts(now));
    let mut buckets: Vec<(f64, f64)> = now
        .iter()
        .filter_map(|(le, count)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count - before.get(le).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(bound, _)| *bound)
}

/// What is shown: the last two scrapes and how far apart they were.
#[derive(Debug, Default)]
pub struct View {
    pub before: Option<(Scrape, Instant)>,
    pub now: Option<(Scrape, Instant)>,
    pub status: Option<serde_json::Value>,
    /// Why the last scrape failed, while it does.
    pub unreachable: Option<String>,
    pub paused: bool,
    pub sort_by_name: bool,
}

impl View {
    /// Per second, how much the counter `name` (with `labels`) grew.
    fn rate(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match (&self.before, &self.now) {
            (Some((b, bt)), Some((n, nt))) => {
                let seconds = nt.duration_since(*bt).as_secs_f64().max(1e-3);
                ((n.sum(name, labels) - b.sum(name, labels)) / seconds).max(0.0)
            }
            _ => 0.0,
        }
    }

    /// Rates of `name` by `label`.
    fn rates_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let (Some((b, bt)), Some((n, nt))) = (&self.before, &self.now) else {
            return BTreeMap::new();
        };
        let seconds = nt.duration_since(*bt).as_secs_f64().max(1e-3);
        let before = b.by(name, label);
        n.by(name, label)
            .into_iter()
            .map(|(key, value)| {
                let grew = value - before.get(&key).copied().unwrap_or(0.0);
                (key, (grew / seconds).max(0.0))
            })
            .collect()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.now.as_ref().map_or(0.0, |(n, _)| n.sum(name, labels))
    }

    /// Draws the whole screen.
    pub fn draw(&self, frame: &mut Frame, admin: &str) {
        let sinks_known = self
            .now
            .as_ref()
            .map_or(0, |(n, _)| n.by(telemetry::SINK_UP, "sink").len());
        let [head, top, sinks, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(7),
            Constraint::Length(sinks_known.max(1) as u16 + 3),
            Constraint::Min(6),
        ])
        .areas(frame.area());
        let state = match (&self.unreachable, &self.status) {
            (Some(why), _) => format!("UNREACHABLE: {why}"),
            (None, Some(status)) if status["ready"] == true => "ready".to_owned(),
            (None, Some(_)) => "NOT READY".to_owned(),
            (None, None) => "waiting for the first answer".to_owned(),
        };
        let paused = if self.paused { "  PAUSED" } else { "" };
        frame.render_widget(
            Paragraph::new(format!(
                "fishjam-bridge top  {admin}  {state}{paused}   q quit  p pause  s sort"
            ))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
            head,
        );
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
        frame.render_widget(self.traffic(), left);
        frame.render_widget(self.answers(), right);
        frame.render_widget(self.sinks(), sinks);
        let [types, state] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(bottom);
        frame.render_widget(self.types(types.height.saturating_sub(3) as usize), types);
        frame.render_widget(self.state(), state);
    }

    fn traffic(&self) -> Paragraph<'static> {
        const RECEIVED: &str = telemetry::EVENTS_RECEIVED;
        let mut lines = vec![Line::from(format!(
            "events/s  {:>10.0}",
            self.rate(RECEIVED, &[])
        ))];
        for (source, rate) in self.rates_by(RECEIVED, "source") {
            lines.push(Line::from(format!("  {source:<12}{rate:>10.0}")));
        }
        let latency = match (&self.before, &self.now) {
            (Some((b, _)), Some((n, _))) => {
                let q = |q| {
                    quantile(b, n, telemetry::ACK_LATENCY, q)
                        .map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1000.0))
                };
                format!("ack latency  p50 {}  p99 {}", q(0.5), q(0.99))
            }
            _ => "ack latency  -".to_owned(),
        };
        lines.push(Line::from(latency));
        lines.push(Line::from(format!(
            "in flight {:.0} of {:.0} (fullest sink)",
            self.gauge(telemetry::PIPELINE_IN_FLIGHT, &[]),
            self.gauge(telemetry::PIPELINE_CAPACITY, &[])
        )));
        Paragraph::new(lines).block(Block::bordered().title("traffic"))
    }

    fn answers(&self) -> Paragraph<'static> {
        let mut lines = vec![Line::from("webhook answers/s by status")];
        let answers = self.rates_by(telemetry::WEBHOOK_REQUESTS, "status");
        for (status, rate) in answers {
            let style = if status.starts_with('5') || status.starts_with('4') {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            lines.push(Line::styled(format!("  {status}  {rate:>10.1}"), style));
        }
        lines.push(Line::from(format!(
            "rooms {:.0}   connected peers {:.0}",
            self.gauge(telemetry::ROOMS, &[]),
            self.gauge(telemetry::PEERS_CONNECTED, &[])
        )));
        Paragraph::new(lines).block(Block::bordered().title("webhooks and rooms"))
    }

    fn sinks(&self) -> Table<'static> {
        let names: Vec<String> = self
            .now
            .as_ref()
            .map(|(n, _)| n.by(telemetry::SINK_UP, "sink").into_keys().collect())
            .unwrap_or_default();
        let lag = self.status.as_ref().map(|s| s["lag"].clone());
        let rows = names.into_iter().map(|sink| {
            let labels = [("sink", sink.as_str())];
            let up = self.gauge(telemetry::SINK_UP, &labels) > 0.0;
            let state = if up { "up" } else { "DOWN" };
            let of = |key: &str| {
                lag.as_ref()
                    .map(|lag| lag[&sink][key].to_string())
                    .filter(|v| v != "null")
                    .unwrap_or_else(|| "-".to_owned())
            };
            let row = Row::new(vec![
                sink.clone(),
                state.to_owned(),
                format!("{:.0}", self.rate(telemetry::SINK_ACKNOWLEDGED, &labels)),
                format!("{:.0}", self.gauge(telemetry::SINK_QUEUE, &labels)),
                of("events"),
                of("seconds"),
                of("spool_cursor"),
            ]);
            if up {
                row
            } else {
                row.style(Style::default().fg(Color::Red))
            }
        });
        Table::new(
            rows,
            [
                Constraint::Min(12),
                Constraint::Length(6),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(12),
            ],
        )
        .header(
            Row::new([
                "sink",
                "state",
                "acked/s",
                "queued",
                "lag events",
                "lag s",
                "spool cursor",
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title("sinks"))
    }

    fn types(&self, room: usize) -> Table<'static> {
        let mut rates: Vec<(String, f64)> = self
            .rates_by(telemetry::EVENTS_RECEIVED, "event_type")
            .into_iter()
            .filter(|(_, rate)| *rate > 0.0 || self.sort_by_name)
            .collect();
        if !self.sort_by_name {
            rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        let rows = rates
            .into_iter()
            .take(room)
            .map(|(name, rate)| Row::new(vec![name, format!("{rate:.0}")]));
        let title = if self.sort_by_name {
            "event types (by name)"
        } else {
            "event types (by rate)"
        };
        Table::new(rows, [Constraint::Min(24), Constraint::Length(10)])
            .header(
                Row::new(["type", "events/s"]).style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(Block::bordered().title(title))
    }

    fn state(&self) -> Paragraph<'static> {
        let engaged = self.gauge(telemetry::SPOOL_ENGAGED, &[]) > 0.0;
        let max = self.gauge(telemetry::SPOOL_MAX_BYTES, &[]);
        let mut lines = vec![if max > 0.0 {
            Line::from(format!(
                "spool {:.1} of {:.0} MiB{}",
                self.gauge(telemetry::SPOOL_BYTES, &[]) / 1048576.0,
                max / 1048576.0,
                if engaged { ", ENGAGED" } else { "" }
            ))
        } else {
            Line::from("spool off")
        }];
        let notifier = self
            .now
            .as_ref()
            .map(|(n, _)| n.by(telemetry::NOTIFIER_STATE, "state"))
            .unwrap_or_default();
        match notifier.iter().find(|(_, v)| **v > 0.0) {
            None => lines.push(Line::from("notifier off")),
            Some((state, _)) => {
                let last = self.gauge(telemetry::NOTIFIER_LAST_MESSAGE, &[]);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let gap = if last > 0.0 {
                    format!("{:.0} s since Fishjam was heard", (now - last).max(0.0))
                } else {
                    "nothing heard yet".to_owned()
                };
                let start = self.gauge(telemetry::NOTIFIER_SESSION_START, &[]);
                let session = if start > 0.0 {
                    format!(" for {:.0} s", (now - start).max(0.0))
                } else {
                    String::new()
                };
                lines.push(Line::from(format!("notifier {state}{session}, {gap}")));
                lines.push(Line::from(format!(
                    "  connects {:.0}, disconnects {:.0}",
                    self.gauge(telemetry::NOTIFIER_CONNECTS, &[]),
                    self.gauge(telemetry::NOTIFIER_DISCONNECTS, &[])
                )));
            }
        }
        Paragraph::new(lines).block(Block::bordered().title("spool and notifier"))
    }
}

/// `top`: the view of the bridge at `admin`, read `every` so often, until
/// the user quits; `ca_file` is trusted beside the platform's roots.
pub fn top(
    admin: &str,
    every: Duration,
    ca_file: Option<&std::path::Path>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    // A read that hangs gives up by the next one (the bridge is then shown
    // as unreachable), yet never within less than two seconds.
    let timeout = every.max(Duration::from_secs(2));
    let client = super::admin_client(ca_file, token_file, Some(timeout))?;
    super::runtime().block_on(run(&client, admin, every))
}

/// Runs the view against the bridge at `admin` until the user quits.
pub async fn run(client: &reqwest::Client, admin: &str, every: Duration) -> anyhow::Result<()> {
    let base = admin.trim_end_matches('/').to_owned();
    let mut view = View::default();
    let mut terminal = ratatui::init();
    let result = async {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next && !view.paused {
                scrape(client, &base, &mut view).await;
                next = Instant::now() + every;
            }
            terminal.draw(|frame| view.draw(frame, &base))?;
            // Keys are read between scrapes, without blocking the runtime long.
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let pressed = tokio::task::block_in_place(|| -> std::io::Result<Option<KeyCode>> {
                if event::poll(wait)? {
                    if let Input::Key(key) = event::read()? {
                        if key.kind == KeyEventKind::Press {
                            return Ok(Some(key.code));
                        }
                    }
                }
                Ok(None)
            })?;
            match pressed {
                Some(KeyCode::Char('q') | KeyCode::Esc) => return Ok(()),
                Some(KeyCode::Char('p')) => view.paused = !view.paused,
                Some(KeyCode::Char('s')) => view.sort_by_name = !view.sort_by_name,
                _ => {}
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

async fn scrape(client: &reqwest::Client, base: &str, view: &mut View) {
    let metrics = async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    match metrics.await {
        Ok(text) => {
            view.before = view.now.take();
            view.now = Some((Scrape::parse(&text), Instant::now()));
            view.unreachable = None;
        }
        Err(error) => {
            view.unreachable = Some(crate::telemetry::Chain(&error).to_string());
            return;
        }
    }
    let status = async {
        client
            .get(format!("{base}/status"))
            .send()
            .await?
            .text()
            .await
    };
    view.status = status
        .await
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_sums_series_and_a_histogram_gives_its_quantiles() {
        let before = Scrape::parse(
            "# HELP x\nfishjam_bridge_sink_up{sink=\"kafka\"} 1\nlat_bucket{le=\"0.001\"} 0\nlat_bucket{le=\"0.01\"} 0\nlat_bucket{le=\"+Inf\"} 0\n",
        );
        let now = Scrape::parse(
            "fishjam_bridge_sink_up{sink=\"kafka\"} 1\nfishjam_bridge_sink_up{sink=\"nats\"} 0\nlat_bucket{le=\"0.001\"} 60\nlat_bucket{le=\"0.01\"} 99\nlat_bucket{le=\"+Inf\"} 100\nbroken line\n",
        );
        assert_eq!(now.sum("fishjam_bridge_sink_up", &[]), 1.0);
        assert_eq!(now.sum("fishjam_bridge_sink_up", &[("sink", "nats")]), 0.0);
        assert_eq!(now.by("fishjam_bridge_sink_up", "sink").len(), 2);
        assert_eq!(quantile(&before, &now, "lat", 0.5), Some(0.001));
        assert_eq!(quantile(&before, &now, "lat", 0.99), Some(0.01));
        assert_eq!(quantile(&now, &now, "lat", 0.5), None, "nothing observed");
    }
}
