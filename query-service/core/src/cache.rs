//! A map from SQL text to what was worked out from it, bounded by bytes.
//!
//! Dashboards send the same statements again and again, so the gateway (statement facts,
//! result schemas) and the worker (logical plans) keep what they derived from a text. A tenant
//! can send endless distinct texts, so each cache has a byte budget: an entry larger than a
//! sixteenth of it is not kept, and when full the cache empties and fills again with what is
//! sent now. Emptying is O(1) per insert on average and cannot be steered into keeping one
//! tenant's entries while dropping another's, which a recency order could.

use std::collections::HashMap;
use std::sync::Mutex;

/// Cached values by text, at most `budget` bytes by the sizes their inserts declared.
#[derive(Debug)]
pub struct TextCache<V> {
    budget: usize,
    entries: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    by_text: HashMap<Box<str>, V>,
    bytes: usize,
}

impl<V: Clone> TextCache<V> {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: Mutex::new(Entries {
                by_text: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        // The map is consistent after every operation, so a panic elsewhere leaves it usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value kept for `text`.
    pub fn get(&self, text: &str) -> Option<V> {
        self.lock().by_text.get(text).cloned()
    }

    /// Keeps `value` for `text`; `size` is what it holds beyond the text itself. Too large an
    /// entry is not kept.
    pub fn insert(&self, text: &str, value: V, size: usize) {
        let size = text.len().saturating_add(size);
        if size > self.budget / 16 {
            return;
        }
        let mut entries = self.lock();
        if entries.bytes + size > self.budget {
            entries.by_text.clear();
            entries.bytes = 0;
        }
        if entries.by_text.insert(text.into(), value).is_none() {
            entries.bytes += size;
        }
    }

    /// Bytes held, by the sizes declared.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().by_text.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_and_returns() {
        let cache = TextCache::new(1 << 10);
        assert_eq!(cache.get("SELECT 1"), None);
        cache.insert("SELECT 1", 7, 8);
        assert_eq!(cache.get("SELECT 1"), Some(7));
        assert_eq!(cache.bytes(), 16);
        // The same text again replaces the value without counting twice.
        cache.insert("SELECT 1", 8, 8);
        assert_eq!((cache.get("SELECT 1"), cache.bytes()), (Some(8), 16));
    }

    #[test]
    fn refuses_entries_over_a_sixteenth() {
        let cache = TextCache::new(160);
        cache.insert("x", 1, 10);
        assert!(cache.is_empty());
        cache.insert("x", 1, 9);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn empties_when_full_and_stays_bounded() {
        let cache = TextCache::new(1 << 10);
        for i in 0..10_000 {
            cache.insert(&format!("SELECT {i}"), i, 32);
            assert!(cache.bytes() <= 1 << 10);
        }
        // What was sent last is there.
        assert_eq!(cache.get("SELECT 9999"), Some(9999));
        assert!(cache.len() < 30);
    }
}
