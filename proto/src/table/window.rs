//! [`WindowTable`]: a bounded table of time-windowed entries, the memory bound behind R5 and R7.
//!
//! Each entry remembers when it started. An entry older than the table's
//! window is expired: lookups treat it as absent and inserts reuse its slot.
//! Every operation is `O(1)` (one hash lookup, plus one removal when a full
//! table reclaims its oldest entry), room for `capacity` entries is reserved
//! at construction so that nothing allocates afterwards, and the table never
//! holds more than `capacity` entries whatever ids the network sends. Entries
//! are kept in the order they (re)started; the oldest is the first to go.
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

use core::hash::Hash;
use core::time::Duration;

use super::slots::Slots;
use crate::time::Instant;

/// A bounded map from `K` to `V` whose entries expire `window` after they start.
#[derive(Clone, Debug)]
pub struct WindowTable<K, V> {
    /// Entries with their start, queued oldest start first.
    slots: Slots<K, (Instant, V)>,
    capacity: usize,
    window: Duration,
}

impl<K: Hash + Eq + Copy, V> WindowTable<K, V> {
    /// An empty table holding at most `capacity` (≥ 1) entries, with room for
    /// all of them reserved now.
    #[must_use]
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self::with_seed(capacity, window, 0)
    }

    /// [`new`](Self::new) with the key hash seeded by `seed` (the agent passes
    /// one derived from its own seed, so that the network cannot aim keys at
    /// one hash bucket).
    #[must_use]
    pub fn with_seed(capacity: usize, window: Duration, seed: u64) -> Self {
        let capacity = capacity.max(1);
        WindowTable {
            slots: Slots::with_capacity(capacity, seed),
            capacity,
            window,
        }
    }

    /// Number of entries held (expired ones included until they are reused or
    /// evicted).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the table holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    /// The most entries the table will hold.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[inline]
    fn live(&self, start: Instant, now: Instant) -> bool {
        now.saturating_duration_since(start) < self.window
    }

    /// The live entry in slot `at`.
    #[inline]
    fn live_at(&self, now: Instant, at: u32) -> bool {
        self.slots
            .value(at)
            .is_some_and(|(start, _)| self.live(*start, now))
    }

    /// The live entry for `key`, if any.
    pub fn get_mut(&mut self, now: Instant, key: &K) -> Option<&mut V> {
        let at = self.slots.find(key).filter(|&at| self.live_at(now, at))?;
        self.slots.value_mut(at).map(|(_, v)| v)
    }

    /// The live entry for `key`, starting a fresh one with `init()` at `now` when
    /// there is none (or it expired). May evict the oldest entry to make room.
    pub fn entry(&mut self, now: Instant, key: K, init: impl FnOnce() -> V) -> &mut V {
        let at = match self.slots.find(&key) {
            Some(at) => {
                if !self.live_at(now, at) {
                    self.restart(now, at, init());
                }
                at
            }
            None => {
                self.make_room();
                self.start(now, key, init())
            }
        };
        self.value_at(at)
    }

    /// The live entry for `key`, starting a fresh one with `init()` at `now`
    /// when there is none (or it expired) — failing closed: when the table is
    /// full of live entries, `None`, and nothing changes.
    #[inline]
    pub fn try_entry(&mut self, now: Instant, key: K, init: impl FnOnce() -> V) -> Option<&mut V> {
        let at = match self.slots.find(&key) {
            Some(at) => {
                if !self.live_at(now, at) {
                    self.restart(now, at, init());
                }
                at
            }
            None => {
                if !self.room_for_new(now) {
                    return None;
                }
                self.make_room();
                self.start(now, key, init())
            }
        };
        Some(self.value_at(at))
    }

    /// Whether `key` has (or could get, by reclaiming only expired entries) a
    /// slot at `now`.
    #[must_use]
    pub fn can_insert(&self, now: Instant, key: &K) -> bool {
        self.slots.find(key).is_some() || self.room_for_new(now)
    }

    /// Whether a new key would find a slot by reclaiming only expired entries.
    #[inline]
    fn room_for_new(&self, now: Instant) -> bool {
        self.slots.len() < self.capacity
            || self
                .slots
                .front()
                .is_some_and(|oldest| !self.live_at(now, oldest))
    }

    /// Whether a live entry for `key` exists.
    #[must_use]
    pub fn contains(&self, now: Instant, key: &K) -> bool {
        self.slots.find(key).is_some_and(|at| self.live_at(now, at))
    }

    /// Starts a fresh entry for `key` at `now`, replacing any previous one.
    /// May evict the oldest entry to make room.
    pub fn insert(&mut self, now: Instant, key: K, value: V) {
        match self.slots.find(&key) {
            Some(at) => self.restart(now, at, value),
            None => {
                self.make_room();
                self.start(now, key, value);
            }
        }
    }

    /// Starts a fresh entry for `key` at `now`, replacing any previous one —
    /// failing closed like [`try_entry`](Self::try_entry): `false`, and
    /// nothing changes, when `key` is new and every entry is live.
    pub fn try_insert(&mut self, now: Instant, key: K, value: V) -> bool {
        let at = self.slots.find(&key);
        self.try_insert_at(now, at, key, value)
    }

    /// The slot holding `key`, live or expired: what the `*_at` methods take,
    /// so that a caller that looks, then decides, then writes does one hash
    /// lookup. A slot is valid until the table is next changed.
    #[inline]
    pub(crate) fn slot_of(&self, key: &K) -> Option<u32> {
        self.slots.find(key)
    }

    /// The entry in slot `at` when it is live.
    #[inline]
    pub(crate) fn live_mut_at(&mut self, now: Instant, at: u32) -> Option<&mut V> {
        if !self.live_at(now, at) {
            return None;
        }
        self.slots.value_mut(at).map(|(_, v)| v)
    }

    /// [`try_insert`](Self::try_insert) for a key whose slot (or absence)
    /// [`slot_of`](Self::slot_of) just returned.
    #[inline]
    pub(crate) fn try_insert_at(
        &mut self,
        now: Instant,
        at: Option<u32>,
        key: K,
        value: V,
    ) -> bool {
        match at {
            Some(at) => self.restart(now, at, value),
            None if self.room_for_new(now) => {
                self.make_room();
                self.start(now, key, value);
            }
            None => return false,
        }
        true
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.slots.remove(key).map(|(_, v)| v)
    }

    /// Slot `at` starts afresh at `now` with `value`: youngest in the order.
    #[inline]
    fn restart(&mut self, now: Instant, at: u32, value: V) {
        if let Some(e) = self.slots.value_mut(at) {
            *e = (now, value);
        }
        self.slots.queue_back(at);
    }

    /// A new entry (room already made).
    fn start(&mut self, now: Instant, key: K, value: V) -> u32 {
        let at = self.slots.insert_new(key, (now, value));
        self.slots.queue_back(at);
        at
    }

    fn value_at(&mut self, at: u32) -> &mut V {
        match self.slots.value_mut(at) {
            Some((_, v)) => v,
            // Every caller passes the slot it just found or filled.
            None => unreachable!("window table slot {at} is empty"),
        }
    }

    /// Evicts the oldest-started entries (expired ones are always the oldest
    /// while time does not go backwards) until one more fits.
    fn make_room(&mut self) {
        while self.slots.len() >= self.capacity {
            let Some(oldest) = self.slots.front() else {
                break;
            };
            self.slots.remove_at(oldest);
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
        assert_eq!(tab.slots.slab_len(), 3);
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

    /// The table against a plain model (a list in (re)start order), for any
    /// sequence of operations with time that does not go backwards.
    mod model {
        use super::*;
        use alloc::vec::Vec;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Entry(u8),
            TryEntry(u8),
            Insert(u8),
            TryInsert(u8),
            Remove(u8),
            Get(u8),
            Wait(u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..12u8).prop_map(Op::Entry),
                (0..12u8).prop_map(Op::TryEntry),
                (0..12u8).prop_map(Op::Insert),
                (0..12u8).prop_map(Op::TryInsert),
                (0..12u8).prop_map(Op::Remove),
                (0..12u8).prop_map(Op::Get),
                (0..400u16).prop_map(Op::Wait),
            ]
        }

        /// (key, start, value), oldest start first.
        struct Model {
            items: Vec<(u8, u64, u32)>,
            cap: usize,
            window: u64,
        }

        impl Model {
            fn pos(&self, k: u8) -> Option<usize> {
                self.items.iter().position(|e| e.0 == k)
            }
            fn live(&self, now: u64, i: usize) -> bool {
                now - self.items[i].1 < self.window
            }
            fn get(&self, now: u64, k: u8) -> Option<u32> {
                self.pos(k)
                    .filter(|&i| self.live(now, i))
                    .map(|i| self.items[i].2)
            }
            fn room_for_new(&self, now: u64) -> bool {
                self.items.len() < self.cap || !self.live(now, 0)
            }
            fn start(&mut self, now: u64, k: u8, v: u32) {
                if let Some(i) = self.pos(k) {
                    self.items.remove(i);
                } else {
                    while self.items.len() >= self.cap {
                        self.items.remove(0);
                    }
                }
                self.items.push((k, now, v));
            }
            fn entry(&mut self, now: u64, k: u8, v: u32) -> u32 {
                match self.get(now, k) {
                    Some(have) => have,
                    None => {
                        self.start(now, k, v);
                        v
                    }
                }
            }
        }

        proptest! {
            #[test]
            fn window_table_matches_the_model(
                cap in 1..6usize,
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let window = 1_000u64;
                let mut tab = WindowTable::with_seed(cap, Duration::from_millis(window), 5);
                let mut m = Model { items: Vec::new(), cap, window };
                let mut now = 0u64;
                let mut next = 1u32;
                for op in ops {
                    let t = Instant::from_millis(now);
                    next += 1;
                    match op {
                        Op::Entry(k) => {
                            let got = *tab.entry(t, k, || next);
                            prop_assert_eq!(got, m.entry(now, k, next));
                        }
                        Op::TryEntry(k) => {
                            let got = tab.try_entry(t, k, || next).map(|v| *v);
                            let want = if m.pos(k).is_some() || m.room_for_new(now) {
                                Some(m.entry(now, k, next))
                            } else {
                                None
                            };
                            prop_assert_eq!(got, want);
                        }
                        Op::Insert(k) => {
                            tab.insert(t, k, next);
                            m.start(now, k, next);
                        }
                        Op::TryInsert(k) => {
                            let want = m.pos(k).is_some() || m.room_for_new(now);
                            prop_assert_eq!(tab.try_insert(t, k, next), want);
                            if want {
                                m.start(now, k, next);
                            }
                        }
                        Op::Remove(k) => {
                            let want = m.pos(k).map(|i| m.items.remove(i).2);
                            prop_assert_eq!(tab.remove(&k), want);
                        }
                        Op::Get(k) => {
                            prop_assert_eq!(tab.get_mut(t, &k).map(|v| *v), m.get(now, k));
                            prop_assert_eq!(tab.contains(t, &k), m.get(now, k).is_some());
                            prop_assert_eq!(tab.can_insert(t, &k), m.pos(k).is_some() || m.room_for_new(now));
                        }
                        Op::Wait(ms) => now += u64::from(ms),
                    }
                    prop_assert_eq!(tab.len(), m.items.len());
                    prop_assert!(tab.len() <= cap);
                }
            }
        }
    }
}
