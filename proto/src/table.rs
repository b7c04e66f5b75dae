//! A bounded table of time-windowed entries, the memory bound behind R5 and R7.
//!
//! Each entry remembers when it started. An entry older than the table's
//! window is expired: lookups treat it as absent and inserts reuse its slot.
//! Every operation is `O(log capacity)`, and the table never holds more than
//! `capacity` entries whatever ids the network sends.
//!
//! Two ways to make room when the table is full and a new key arrives:
//!
//! * **fail closed** ([`try_entry`](WindowTable::try_entry),
//!   [`can_insert`](WindowTable::can_insert)): only expired entries are
//!   reclaimed; while every entry is live the newcomer is refused. Budgets use
//!   this (R5): a flood of new ids can never make the table forget a live
//!   budget and hand its owner a fresh allowance.
//! * **evicting** ([`entry`](WindowTable::entry),
//!   [`insert`](WindowTable::insert)): the entry with the oldest start goes.
//!   For caches whose loss is harmless.

use alloc::collections::{BTreeMap, BTreeSet};
use core::time::Duration;

use crate::time::Instant;

/// A bounded map from `K` to `V` whose entries expire `window` after they start.
#[derive(Clone, Debug)]
pub struct WindowTable<K, V> {
    entries: BTreeMap<K, (Instant, V)>,
    by_start: BTreeSet<(Instant, K)>,
    capacity: usize,
    window: Duration,
}

impl<K: Ord + Copy, V> WindowTable<K, V> {
    /// An empty table holding at most `capacity` (≥ 1) entries.
    #[must_use]
    pub fn new(capacity: usize, window: Duration) -> Self {
        WindowTable {
            entries: BTreeMap::new(),
            by_start: BTreeSet::new(),
            capacity: capacity.max(1),
            window,
        }
    }

    /// Number of entries held (expired ones included until they are reused or
    /// evicted).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries the table will hold.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn live(&self, start: Instant, now: Instant) -> bool {
        now.saturating_duration_since(start) < self.window
    }

    /// The live entry for `key`, if any.
    pub fn get_mut(&mut self, now: Instant, key: &K) -> Option<&mut V> {
        let window = self.window;
        match self.entries.get_mut(key) {
            Some((start, v)) if now.saturating_duration_since(*start) < window => Some(v),
            _ => None,
        }
    }

    /// The live entry for `key`, starting a fresh one with `init()` at `now` when
    /// there is none (or it expired). May evict the oldest entry to make room.
    pub fn entry(&mut self, now: Instant, key: K, init: impl FnOnce() -> V) -> &mut V {
        let live = self
            .entries
            .get(&key)
            .is_some_and(|(start, _)| self.live(*start, now));
        if !live {
            self.remove(&key);
            self.make_room();
            self.by_start.insert((now, key));
        }
        // Live: found. Not live: removed above, so this inserts.
        &mut self.entries.entry(key).or_insert_with(|| (now, init())).1
    }

    /// The live entry for `key`, starting a fresh one with `init()` at `now`
    /// when there is none (or it expired) — failing closed: when the table is
    /// full of live entries, `None`, and nothing changes.
    pub fn try_entry(&mut self, now: Instant, key: K, init: impl FnOnce() -> V) -> Option<&mut V> {
        if !self.can_insert(now, &key) {
            return None;
        }
        Some(self.entry(now, key, init))
    }

    /// Whether `key` has (or could get, by reclaiming only expired entries) a
    /// slot at `now`.
    #[must_use]
    pub fn can_insert(&self, now: Instant, key: &K) -> bool {
        self.entries.contains_key(key)
            || self.entries.len() < self.capacity
            || self
                .by_start
                .first()
                .is_some_and(|(start, _)| !self.live(*start, now))
    }

    /// Whether a live entry for `key` exists.
    #[must_use]
    pub fn contains(&self, now: Instant, key: &K) -> bool {
        self.entries
            .get(key)
            .is_some_and(|(start, _)| self.live(*start, now))
    }

    /// Starts a fresh entry for `key` at `now`, replacing any previous one.
    pub fn insert(&mut self, now: Instant, key: K, value: V) {
        self.remove(&key);
        self.entry(now, key, || value);
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (start, v) = self.entries.remove(key)?;
        self.by_start.remove(&(start, *key));
        Some(v)
    }

    /// Evicts oldest-started entries (expired ones are always the oldest) until
    /// one more fits.
    fn make_room(&mut self) {
        while self.entries.len() >= self.capacity {
            let Some((_, key)) = self.by_start.pop_first() else {
                break;
            };
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn entries_expire_after_the_window() {
        let mut tab = WindowTable::new(8, Duration::from_secs(10));
        *tab.entry(t(0), 1u64, || 0u32) += 1;
        *tab.entry(t(9_999), 1u64, || 0u32) += 1;
        assert_eq!(tab.get_mut(t(9_999), &1), Some(&mut 2));
        assert_eq!(tab.get_mut(t(10_000), &1), None);
        assert_eq!(*tab.entry(t(10_000), 1u64, || 0u32), 0);
        assert_eq!(tab.len(), 1);
    }

    #[test]
    fn full_table_evicts_the_oldest() {
        let mut tab = WindowTable::new(3, Duration::from_secs(10));
        for k in 0..3u64 {
            tab.entry(t(k), k, || k);
        }
        tab.entry(t(5), 9, || 9);
        assert_eq!(tab.len(), 3);
        assert_eq!(tab.get_mut(t(5), &0), None);
        assert_eq!(tab.get_mut(t(5), &1), Some(&mut 1));
        for k in 100..100_000u64 {
            tab.entry(t(6), k, || k);
            assert!(tab.len() <= 3);
        }
        assert_eq!(tab.by_start.len(), tab.entries.len());
    }

    #[test]
    fn try_entry_fails_closed_while_every_entry_is_live() {
        let mut tab = WindowTable::new(3, Duration::from_secs(10));
        for k in 0..3u64 {
            *tab.try_entry(t(k), k, || 0u32).unwrap() += 1;
        }
        // Full of live entries: the newcomer is refused, nobody is forgotten.
        assert!(!tab.can_insert(t(5), &9));
        assert!(tab.try_entry(t(5), 9, || 0).is_none());
        assert_eq!(tab.get_mut(t(5), &0), Some(&mut 1));
        // A known key is still served.
        assert_eq!(tab.try_entry(t(5), 1, || 0).copied(), Some(1));
        // Once the oldest expires, its slot is reclaimed.
        assert!(tab.try_entry(t(10_000), 9, || 7).is_some());
        assert_eq!(tab.len(), 3);
        assert!(!tab.contains(t(10_000), &0));
        assert!(tab.contains(t(10_000), &9));
    }
}
