//! [`Slots`]: the keyed storage under every bounded table of the agent.
//!
//! Values live in a slab (`Vec` of slots, freed slots reused through a free
//! list), found by key through a hash index of slot numbers, and optionally
//! threaded on one FIFO list (oldest first) for eviction order. Lookup,
//! insert, remove, queue and unqueue are all `O(1)`; nothing allocates once
//! the slab and the index have grown to the table's size, and a table sized
//! at construction ([`Slots::with_capacity`]) never allocates at all while it
//! stays within that size.
//!
//! The index is keyed with a seed the agent derives from its own seed:
//! deterministic for a given seed, unknown to whoever picks the keys (node
//! ids) on the network.

use alloc::vec::Vec;
use core::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// No slot.
const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Slot<K, V> {
    /// The entry; `None` for a free slot.
    item: Option<(K, V)>,
    /// FIFO links (live, queued slots) or the free-list link (`next`).
    prev: u32,
    next: u32,
    queued: bool,
}

/// A slab of `(K, V)` entries indexed by key, with an optional FIFO order.
#[derive(Clone)]
pub(crate) struct Slots<K, V> {
    index: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    hasher: FixedState,
}

impl<K, V> core::fmt::Debug for Slots<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.len)
            .field("slab", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Copy, V> Slots<K, V> {
    /// Room for `capacity` entries without allocating again. The index gets
    /// twice that many places, so that removals (which leave tombstones) are
    /// always cleaned up by rehashing in place, never by growing.
    pub(crate) fn with_capacity(capacity: usize, seed: u64) -> Self {
        Slots {
            index: HashTable::with_capacity(capacity.saturating_mul(2)),
            slots: Vec::with_capacity(capacity),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            hasher: FixedState::with_seed(seed),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn slot(&self, at: u32) -> Option<&Slot<K, V>> {
        self.slots.get(at as usize)
    }

    #[inline]
    fn slot_mut(&mut self, at: u32) -> Option<&mut Slot<K, V>> {
        self.slots.get_mut(at as usize)
    }

    /// The slot holding `key`.
    #[inline]
    pub(crate) fn find(&self, key: &K) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(key), |&i| {
                slots
                    .get(i as usize)
                    .and_then(|s| s.item.as_ref())
                    .is_some_and(|(k, _)| k == key)
            })
            .copied()
    }

    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.find(key).and_then(|at| self.value(at))
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).and_then(|at| self.value_mut(at))
    }

    /// The entry in slot `at`.
    #[inline]
    pub(crate) fn entry_at(&self, at: u32) -> Option<(&K, &V)> {
        self.slot(at)
            .and_then(|s| s.item.as_ref())
            .map(|(k, v)| (k, v))
    }

    #[inline]
    pub(crate) fn value(&self, at: u32) -> Option<&V> {
        self.entry_at(at).map(|(_, v)| v)
    }

    #[inline]
    pub(crate) fn value_mut(&mut self, at: u32) -> Option<&mut V> {
        self.slot_mut(at)
            .and_then(|s| s.item.as_mut())
            .map(|(_, v)| v)
    }

    pub(crate) fn key(&self, at: u32) -> Option<K> {
        self.entry_at(at).map(|(k, _)| *k)
    }

    /// Stores `value` under `key`, which must not be present (check with
    /// [`find`](Self::find) first). Returns its slot.
    pub(crate) fn insert_new(&mut self, key: K, value: V) -> u32 {
        debug_assert!(self.find(&key).is_none(), "insert_new of a present key");
        let at = if self.free == NIL {
            let at = u32::try_from(self.slots.len()).unwrap_or(NIL);
            self.slots.push(Slot {
                item: None,
                prev: NIL,
                next: NIL,
                queued: false,
            });
            at
        } else {
            self.free
        };
        if let Some(s) = self.slot_mut(at) {
            let next_free = s.next;
            s.item = Some((key, value));
            s.prev = NIL;
            s.next = NIL;
            s.queued = false;
            if self.free == at {
                self.free = next_free;
            }
        }
        let hash = self.hash(&key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, at, |&i| {
            slots
                .get(i as usize)
                .and_then(|s| s.item.as_ref())
                .map_or(0, |(k, _)| hasher.hash_one(k))
        });
        self.len = self.len.saturating_add(1);
        at
    }

    /// Removes the entry in slot `at` (and from the FIFO if queued).
    pub(crate) fn remove_at(&mut self, at: u32) -> Option<(K, V)> {
        let key = self.key(at)?;
        self.unqueue(at);
        let hash = self.hash(&key);
        if let Ok(e) = self.index.find_entry(hash, |&i| i == at) {
            e.remove();
        }
        let free = self.free;
        let s = self.slot_mut(at)?;
        let item = s.item.take();
        s.next = free;
        self.free = at;
        self.len = self.len.saturating_sub(1);
        item
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.find(key)?;
        self.remove_at(at).map(|(_, v)| v)
    }

    /// Appends slot `at` to the back of the FIFO (moving it there if queued).
    pub(crate) fn queue_back(&mut self, at: u32) {
        if self.entry_at(at).is_none() {
            return;
        }
        self.unqueue(at);
        let tail = self.tail;
        if let Some(s) = self.slot_mut(at) {
            s.prev = tail;
            s.next = NIL;
            s.queued = true;
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = at,
            None => self.head = at,
        }
        self.tail = at;
    }

    /// Takes slot `at` off the FIFO, if it is on it.
    pub(crate) fn unqueue(&mut self, at: u32) {
        let Some(s) = self.slot_mut(at).filter(|s| s.queued) else {
            return;
        };
        let (prev, next) = (s.prev, s.next);
        s.queued = false;
        s.prev = NIL;
        s.next = NIL;
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    pub(crate) fn is_queued(&self, at: u32) -> bool {
        self.slot(at).is_some_and(|s| s.queued)
    }

    /// The oldest queued slot.
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// Every occupied slot, in slab order (not a meaningful order).
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, &K, &V)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.item
                .as_ref()
                .map(|(k, v)| (u32::try_from(i).unwrap_or(NIL), k, v))
        })
    }

    /// One past the highest slot number in use so far.
    pub(crate) fn slab_len(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(NIL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo<V>(s: &Slots<u64, V>) -> alloc::vec::Vec<u64> {
        let mut out = alloc::vec::Vec::new();
        let mut at = s.head;
        while let Some(slot) = s.slot(at) {
            out.push(slot.item.as_ref().map(|(k, _)| *k).unwrap());
            at = slot.next;
        }
        out
    }

    #[test]
    fn insert_find_remove_and_reuse_slots() {
        let mut s = Slots::with_capacity(4, 9);
        let a = s.insert_new(10u64, 'a');
        let b = s.insert_new(20, 'b');
        assert_eq!(s.get(&10), Some(&'a'));
        assert_eq!(s.find(&20), Some(b));
        assert_eq!(s.remove(&10), Some('a'));
        assert_eq!(s.find(&10), None);
        assert_eq!(s.len(), 1);
        // The freed slot is reused.
        assert_eq!(s.insert_new(30, 'c'), a);
        assert_eq!(s.get(&30), Some(&'c'));
        assert_eq!(s.slab_len(), 2);
    }

    #[test]
    fn fifo_order_survives_moves_and_removals() {
        let mut s = Slots::with_capacity(8, 1);
        let at: alloc::vec::Vec<u32> = (0..5u64).map(|k| s.insert_new(k, ())).collect();
        for &i in &at {
            s.queue_back(i);
        }
        assert_eq!(fifo(&s), [0, 1, 2, 3, 4]);
        s.queue_back(at[1]);
        assert_eq!(fifo(&s), [0, 2, 3, 4, 1]);
        s.unqueue(at[3]);
        assert!(!s.is_queued(at[3]));
        assert_eq!(fifo(&s), [0, 2, 4, 1]);
        s.remove(&0);
        s.remove(&1);
        assert_eq!(fifo(&s), [2, 4]);
        assert_eq!(s.key(s.front().unwrap()), Some(2));
        s.remove(&2);
        s.remove(&4);
        assert_eq!(s.front(), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn churn_at_capacity_keeps_index_and_slab_consistent() {
        let mut s = Slots::with_capacity(64, 3);
        for k in 0..100_000u64 {
            if s.len() == 64 {
                let front = s.front().unwrap();
                s.remove_at(front);
            }
            let at = s.insert_new(k, k * 2);
            s.queue_back(at);
            assert_eq!(s.get(&k), Some(&(k * 2)));
        }
        assert_eq!(s.len(), 64);
        assert_eq!(s.slab_len(), 64);
        assert_eq!(
            fifo(&s),
            (100_000 - 64..100_000).collect::<alloc::vec::Vec<_>>()
        );
    }
}
