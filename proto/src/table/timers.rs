//! [`Timers`]: an indexed binary min-heap of wake-up times, one per slot of a
//! table (the endpoint's pending punches here, the session layer's peers in
//! `natrix-session`).
//!
//! The earliest timer is read in `O(1)`; setting, moving or removing a slot's
//! timer costs `O(log n)`. Ties are broken by a caller-given key (the peer's
//! node id for punches), so the order timers fire in is deterministic. Room
//! for `capacity` timers is reserved at construction; a table that grows past
//! it grows the heap once, never again at that size.

use alloc::vec::Vec;

use crate::time::Instant;

const NONE: u32 = u32::MAX;

/// Wake-up times by slot number, earliest first.
#[derive(Clone, Debug)]
pub struct Timers<T> {
    /// (when, tie-break, slot), a binary min-heap.
    heap: Vec<(Instant, T, u32)>,
    /// Each slot's position in `heap` (`NONE`: no timer).
    pos: Vec<u32>,
}

impl<T: Ord + Copy> Timers<T> {
    /// No timers, with room for `capacity` reserved.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Timers {
            heap: Vec::with_capacity(capacity),
            pos: Vec::with_capacity(capacity),
        }
    }

    /// Number of timers set.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest timer: (when, tie-break, slot).
    #[must_use]
    pub fn peek(&self) -> Option<(Instant, T, u32)> {
        self.heap.first().copied()
    }

    /// The timer of `slot`, if set.
    #[must_use]
    pub fn get(&self, slot: u32) -> Option<Instant> {
        let p = *self.pos.get(slot as usize)?;
        self.heap.get(p as usize).map(|e| e.0)
    }

    /// Sets (or moves) the timer of `slot` to `at`.
    pub fn set(&mut self, slot: u32, at: Instant, tie: T) {
        let s = slot as usize;
        if self.pos.len() <= s {
            self.pos.resize(s.saturating_add(1), NONE);
        }
        let p = self.pos.get(s).copied().unwrap_or(NONE);
        if p == NONE {
            let i = self.heap.len();
            self.heap.push((at, tie, slot));
            self.place(i);
            self.sift_up(i);
        } else if let Some(e) = self.heap.get_mut(p as usize) {
            *e = (at, tie, slot);
            let i = p as usize;
            self.sift_up(i);
            self.sift_down(i);
        }
    }

    /// Clears the timer of `slot`.
    pub fn remove(&mut self, slot: u32) {
        let Some(p) = self.pos.get_mut(slot as usize) else {
            return;
        };
        let i = core::mem::replace(p, NONE);
        if i == NONE {
            return;
        }
        let i = i as usize;
        let last = self.heap.len().saturating_sub(1);
        self.heap.swap(i, last);
        self.heap.pop();
        if i < self.heap.len() {
            self.place(i);
            self.sift_up(i);
            self.sift_down(i);
        }
    }

    fn key(&self, i: usize) -> Option<(Instant, T)> {
        self.heap.get(i).map(|e| (e.0, e.1))
    }

    /// Records where heap entry `i` is.
    fn place(&mut self, i: usize) {
        if let Some(&(_, _, slot)) = self.heap.get(i) {
            if let Some(p) = self.pos.get_mut(slot as usize) {
                *p = u32::try_from(i).unwrap_or(NONE);
            }
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.place(a);
        self.place(b);
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.key(i) >= self.key(parent) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.heap.len() && self.key(l) < self.key(min) {
                min = l;
            }
            if r < self.heap.len() && self.key(r) < self.key(min) {
                min = r;
            }
            if min == i {
                break;
            }
            self.swap(i, min);
            i = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Pops everything in order (removing each earliest timer).
    fn drain(tm: &mut Timers<u64>) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Some((at, _, slot)) = tm.peek() {
            out.push((at.as_nanos() / 1_000_000, slot));
            tm.remove(slot);
        }
        out
    }

    #[test]
    fn earliest_first_with_ties_by_key() {
        let mut tm = Timers::with_capacity(4);
        tm.set(0, t(30), 5u64);
        tm.set(1, t(10), 9);
        tm.set(2, t(10), 1);
        tm.set(3, t(20), 0);
        assert_eq!(tm.get(1), Some(t(10)));
        assert_eq!(drain(&mut tm), [(10, 2), (10, 1), (20, 3), (30, 0)]);
        assert_eq!(tm.len(), 0);
        assert_eq!(tm.get(1), None);
    }

    #[test]
    fn moving_and_removing_keep_the_heap_ordered() {
        let mut tm = Timers::with_capacity(0);
        // A deterministic shuffle of times over 500 slots, then moves and
        // removals, checked against a sort.
        let mut want = alloc::collections::BTreeMap::new();
        let mut x = 7u64;
        for round in 0..4 {
            for slot in 0..500u32 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if round == 3 && slot % 3 == 0 {
                    tm.remove(slot);
                    want.remove(&slot);
                } else {
                    let at = (x >> 40) % 10_000;
                    tm.set(slot, t(at), u64::from(slot));
                    want.insert(slot, at);
                }
            }
        }
        let mut sorted: Vec<(u64, u32)> = want.iter().map(|(s, a)| (*a, *s)).collect();
        sorted.sort();
        assert_eq!(drain(&mut tm), sorted);
    }
}
