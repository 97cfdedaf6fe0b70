//! Publishing once what both sources delivered.
//!
//! With the notifier and webhooks both on, Fishjam sends each notification
//! both ways. Notifications carry no id, so they are matched by content (the
//! event type and `data`) within a time window: a notification from one
//! source that matches one still unmatched from the other source is a
//! duplicate and is dropped. Counts are kept per source, so two identical
//! notifications from the same source (a peer muted twice) are both kept.
//! Memory is bounded: the window holds at most `max_entries` contents, the
//! oldest go first. Each delivery is recorded with what carries it (`T`:
//! fan-out records the body's receipt), so that the delivery a duplicate
//! stands for can be waited for. Pure and synchronous; the pipeline holds
//! it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::core::event::{Event, Message, Source};
use crate::telemetry;

/// Keeps in `messages` only those the other source has not delivered yet
/// (or whose first copy `lost` says is gone), recording them as carried by
/// `carrier`; returns what carries the first copies of those dropped.
pub fn retain_new<T: Clone>(
    dedup: &mut Deduplicator<T>,
    messages: &mut Vec<Message>,
    carrier: &T,
    lost: impl Fn(&T) -> bool,
) -> Vec<T> {
    let now = Instant::now();
    let mut originals = Vec::new();
    messages.retain(
        |message| match dedup.duplicate_of(&message.event, now, carrier) {
            None => true,
            Some(original) if lost(&original) => true,
            Some(original) => {
                originals.push(original);
                false
            }
        },
    );
    dropped(dedup, originals.len());
    originals
}

/// Reports that `count` deliveries were dropped, and what the window holds.
pub fn dropped<T: Clone>(dedup: &Deduplicator<T>, count: usize) {
    if count > 0 {
        telemetry::duplicates_dropped(count);
    }
    telemetry::dedup_entries(dedup.len());
}

#[derive(Debug)]
pub struct Deduplicator<T = ()> {
    window: Duration,
    max_entries: usize,
    /// Unmatched deliveries per content, by source, as sequence numbers
    /// with what carries each.
    entries: HashMap<u64, Pending<T>>,
    /// Every delivery recorded, oldest first, to expire them; a delivery
    /// matched since is skipped when its turn comes.
    order: VecDeque<(Instant, u64, Source, u64)>,
    /// Unmatched deliveries held.
    held: usize,
    next: u64,
}

#[derive(Debug)]
struct Pending<T> {
    webhook: VecDeque<(u64, T)>,
    notifier: VecDeque<(u64, T)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            webhook: VecDeque::new(),
            notifier: VecDeque::new(),
        }
    }
}

impl<T> Pending<T> {
    fn of(&mut self, source: Source) -> &mut VecDeque<(u64, T)> {
        match source {
            Source::Webhook => &mut self.webhook,
            _ => &mut self.notifier,
        }
    }

    fn is_empty(&self) -> bool {
        self.webhook.is_empty() && self.notifier.is_empty()
    }
}

impl<T: Clone> Deduplicator<T> {
    pub fn new(window: Duration, max_entries: usize) -> Deduplicator<T> {
        Deduplicator {
            window,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            held: 0,
            next: 0,
        }
    }

    /// None when `event` should be published (it is recorded, carried by
    /// `carrier`); for the second delivery of a notification the other
    /// source already delivered, what carries that first delivery.
    pub fn duplicate_of(&mut self, event: &Event, now: Instant, carrier: &T) -> Option<T> {
        let (source, other) = match event.source {
            Source::Webhook => (Source::Webhook, Source::Notifier),
            Source::Notifier => (Source::Notifier, Source::Webhook),
            // Only the two Fishjam paths can deliver the same notification.
            Source::Reconciled | Source::Decode => return None,
        };
        self.expire(now);
        let key = content_hash(event);
        let pending = self.entries.entry(key).or_default();
        if let Some((_, original)) = pending.of(other).pop_front() {
            if pending.is_empty() {
                self.entries.remove(&key);
            }
            self.held -= 1;
            return Some(original);
        }
        let sequence = self.next;
        self.next += 1;
        pending.of(source).push_back((sequence, carrier.clone()));
        self.order.push_back((now, key, source, sequence));
        self.held += 1;
        // Matched deliveries leave records behind in `order`; both are bounded.
        while self.held > self.max_entries || self.order.len() > 2 * self.max_entries {
            self.forget_oldest();
        }
        None
    }

    /// Unmatched deliveries held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _, _, _)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some((_, key, source, sequence)) = self.order.pop_front() else {
            return;
        };
        let Some(pending) = self.entries.get_mut(&key) else {
            return;
        };
        let queue = pending.of(source);
        if queue.front().is_some_and(|(first, _)| *first == sequence) {
            queue.pop_front();
            self.held -= 1;
            if pending.is_empty() {
                self.entries.remove(&key);
            }
        }
    }
}

fn content_hash(event: &Event) -> u64 {
    let mut hasher = DefaultHasher::new();
    event.event_type.hash(&mut hasher);
    event.data.hash(&mut hasher);
    event.unmapped_enums.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn event(room: &str, source: Source) -> Event {
        Event {
            id: new_event_id(SystemTime::now()),
            event_type: EventType::RoomCreated,
            source,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("t"),
            data: Data::Room(RoomData {
                room_id: room.to_owned(),
            }),
            unmapped_enums: Vec::new(),
        }
    }

    impl Deduplicator<()> {
        fn admit(&mut self, event: &Event, now: Instant) -> bool {
            self.duplicate_of(event, now, &()).is_none()
        }
    }

    #[test]
    fn the_second_path_is_dropped_and_same_source_repeats_are_kept() {
        let mut dedup = Deduplicator::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        assert!(dedup.admit(&event("a", Source::Notifier), now));
        assert!(
            !dedup.admit(&event("a", Source::Webhook), now),
            "same notification, other path"
        );
        assert!(dedup.is_empty());
        // Twice from one source: both are real.
        assert!(dedup.admit(&event("b", Source::Webhook), now));
        assert!(dedup.admit(&event("b", Source::Webhook), now));
        assert!(!dedup.admit(&event("b", Source::Notifier), now));
        assert!(!dedup.admit(&event("b", Source::Notifier), now));
        assert!(
            dedup.admit(&event("b", Source::Notifier), now),
            "a third one is new"
        );
    }

    #[test]
    fn a_duplicate_names_what_carries_the_first_copy() {
        let mut dedup = Deduplicator::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        assert_eq!(
            dedup.duplicate_of(&event("a", Source::Notifier), now, &1),
            None
        );
        assert_eq!(
            dedup.duplicate_of(&event("a", Source::Webhook), now, &2),
            Some(1)
        );
    }

    #[test]
    fn the_window_and_the_bound_forget() {
        let mut dedup = Deduplicator::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        assert!(dedup.admit(&event("a", Source::Notifier), now));
        assert!(
            dedup.admit(&event("a", Source::Webhook), now + Duration::from_secs(11)),
            "outside the window it is not a duplicate"
        );
        assert!(dedup.admit(&event("x", Source::Notifier), now + Duration::from_secs(11)));
        assert!(dedup.admit(&event("y", Source::Notifier), now + Duration::from_secs(11)));
        assert_eq!(dedup.len(), 2, "bounded");
    }
}
