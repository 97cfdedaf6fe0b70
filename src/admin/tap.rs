//! Live events for a person watching a running bridge (`fishjam-bridge
//! tap`, served at the admin listener's `/tap`): each event once, as the
//! bridge accepts it (after deduplication, before the sinks have it), to
//! every client whose filter it passes. Off unless `admin.tap = true`:
//! events carry peer metadata, which can be personal data.
//!
//! The pipeline never waits for a tap. Events go into a ring of `BUFFER`
//! that every client reads at its own pace; a client that falls a whole
//! ring behind loses the oldest events, is told how many in its stream, and
//! they are counted. With no client, nothing is copied.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::core::event::{EventType, Message, Source};

/// Events a client may fall behind before it loses the oldest.
pub const BUFFER: usize = 1024;

/// What a tap client is given of an event.
#[derive(Debug)]
pub struct Tapped {
    pub event_type: EventType,
    pub source: Source,
    pub room: Option<String>,
    pub json: Bytes,
}

/// The sending side: fan-out publishes into it.
#[derive(Debug, Clone)]
pub struct Tap {
    sender: broadcast::Sender<Arc<Tapped>>,
}

impl Default for Tap {
    fn default() -> Tap {
        Tap {
            sender: broadcast::Sender::new(BUFFER),
        }
    }
}

impl Tap {
    /// Shows `messages` to the clients, if there are any.
    pub fn publish<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for message in messages {
            let event = &message.event;
            let _ = self.sender.send(Arc::new(Tapped {
                event_type: event.event_type,
                source: event.source,
                room: event.data.room_id().map(str::to_owned),
                // A copy: a slice would keep its whole body's buffer in the
                // ring for as long as a slow client lags.
                json: Bytes::copy_from_slice(&message.json),
            }));
        }
    }

    /// A new client's end: the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Tapped>> {
        self.sender.subscribe()
    }
}

/// Which events a client wants; every field that is set must match.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub room: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub source: Option<String>,
}

/// A filter, checked: the names it uses exist.
#[derive(Debug, Clone)]
pub struct Checked {
    room: Option<String>,
    event_type: Option<EventType>,
    source: Option<Source>,
}

/// A name in a filter that names nothing; the client is answered 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("type {0:?} is not an event type (docs/events.md)")]
    EventType(String),
    #[error("source {0:?} is not one of webhook, notifier, reconciled")]
    Source(String),
}

impl Filter {
    /// The filter checked, or what is wrong with it.
    pub fn check(self) -> Result<Checked, FilterError> {
        let event_type = match &self.event_type {
            None => None,
            Some(name) => Some(
                EventType::from_name(name).ok_or_else(|| FilterError::EventType(name.clone()))?,
            ),
        };
        let source = match &self.source {
            None => None,
            Some(name) => Some(
                Source::ALL
                    .into_iter()
                    .find(|source| source.as_str() == name)
                    .ok_or_else(|| FilterError::Source(name.clone()))?,
            ),
        };
        Ok(Checked {
            room: self.room,
            event_type,
            source,
        })
    }
}

impl Checked {
    pub fn passes(&self, tapped: &Tapped) -> bool {
        self.event_type.is_none_or(|t| t == tapped.event_type)
            && self.source.is_none_or(|s| s == tapped.source)
            && self
                .room
                .as_deref()
                .is_none_or(|room| tapped.room.as_deref() == Some(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Event;

    fn event(room: &str) -> Event {
        Event::room_created_for_test(room)
    }

    fn messages(events: Vec<Event>) -> Vec<Message> {
        events.into_iter().map(Message::new).collect()
    }

    #[test]
    fn a_filter_passes_only_what_it_names_and_refuses_unknown_names() {
        let tap = Tap::default();
        // Nobody listens: nothing is kept.
        tap.publish(&messages(vec![event("r1")]));
        let mut client = tap.subscribe();
        tap.publish(&messages(vec![event("r1"), event("r2")]));
        let filter = Filter {
            room: Some("r2".into()),
            event_type: Some("roomCreated".into()),
            source: Some("webhook".into()),
        }
        .check()
        .unwrap();
        let first = client.try_recv().unwrap();
        let second = client.try_recv().unwrap();
        assert!(client.try_recv().is_err());
        assert!(!filter.passes(&first));
        assert!(filter.passes(&second));
        let other_type = Filter {
            event_type: Some("roomDeleted".into()),
            ..Filter::default()
        };
        assert!(!other_type.check().unwrap().passes(&second));
        for wrong in [
            Filter {
                event_type: Some("roomMade".into()),
                ..Filter::default()
            },
            Filter {
                source: Some("carrier-pigeon".into()),
                ..Filter::default()
            },
        ] {
            assert!(wrong.check().is_err());
        }
    }

    #[test]
    fn a_client_that_falls_a_ring_behind_is_told_how_many_it_lost() {
        let tap = Tap::default();
        let mut client = tap.subscribe();
        let events: Vec<_> = (0..BUFFER + 5).map(|i| event(&format!("r{i}"))).collect();
        tap.publish(&messages(events));
        match client.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(lost)) => assert_eq!(lost, 5),
            other => panic!("{other:?}"),
        }
    }
}
