//! Hearing both stores while dual-write is on. A subscriber listening on the default store only
//! would never hear a message published on the other store by a client that does not go through
//! a MultiStore (another service, a process not yet deployed with it). So during dual-write a
//! subscription listens on both stores, and a message published through a MultiStore -- which
//! reaches both -- is delivered once: a message arriving from one store is dropped when the same
//! message (kind, channel or pattern, payload) arrived from the other store within the last
//! `WINDOW` and was not matched yet. Subscription confirmations (and their counts) are the
//! default store's; the other store's are read and dropped.

use crate::protocol::reply::Reply;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a message from one store waits for its twin from the other.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Unmatched messages remembered at most (a busy channel published on one store only).
const REMEMBERED: usize = 10_000;

/// Which of a subscription's connections a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Default,
    Other,
}

#[derive(Default)]
pub struct Dedup {
    unmatched: VecDeque<(Vec<u8>, Side, Instant)>,
}

impl Dedup {
    /// Whether a reply that arrived on `side` is to be delivered.
    pub fn deliver(&mut self, reply: &Reply, side: Side) -> bool {
        let Some(key) = message_key(reply) else {
            // Not a message: the default store's confirmations go through, the other's do not.
            return side == Side::Default;
        };
        let now = Instant::now();
        while self
            .unmatched
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > WINDOW)
            || self.unmatched.len() >= REMEMBERED
        {
            self.unmatched.pop_front();
        }
        match self
            .unmatched
            .iter()
            .position(|(k, s, _)| *s != side && *k == key)
        {
            Some(twin) => {
                self.unmatched.remove(twin);
                false
            }
            None => {
                self.unmatched.push_back((key, side, now));
                true
            }
        }
    }
}

/// A published message (`message`, `pmessage`, `smessage`) as bytes that tell it apart.
fn message_key(reply: &Reply) -> Option<Vec<u8>> {
    let Reply::Array(parts) = reply else {
        return None;
    };
    let kind = parts.first()?.as_bytes()?;
    if !matches!(kind, b"message" | b"pmessage" | b"smessage") {
        return None;
    }
    let mut key = Vec::new();
    for part in parts {
        let bytes = part.as_bytes()?;
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(bytes);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &str) -> Reply {
        Reply::Array(
            ["message", "news", payload]
                .iter()
                .map(|s| Reply::Bulk(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn delivers_a_message_from_either_store_once_and_twins_not_at_all() {
        let mut dedup = Dedup::default();
        assert!(dedup.deliver(&message("a"), Side::Default));
        assert!(!dedup.deliver(&message("a"), Side::Other), "its twin");
        assert!(
            dedup.deliver(&message("b"), Side::Other),
            "only on the other store"
        );
        // Published twice through a MultiStore: two deliveries.
        assert!(dedup.deliver(&message("c"), Side::Default));
        assert!(dedup.deliver(&message("c"), Side::Default));
        assert!(!dedup.deliver(&message("c"), Side::Other));
        assert!(!dedup.deliver(&message("c"), Side::Other));
    }

    #[test]
    fn passes_the_default_stores_confirmations_only() {
        let confirmation = Reply::Array(vec![
            Reply::Bulk(b"subscribe".to_vec()),
            Reply::Bulk(b"news".to_vec()),
            Reply::Integer(1),
        ]);
        let mut dedup = Dedup::default();
        assert!(dedup.deliver(&confirmation, Side::Default));
        assert!(!dedup.deliver(&confirmation, Side::Other));
    }
}
