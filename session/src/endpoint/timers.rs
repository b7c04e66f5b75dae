//! An indexed min-heap of per-peer deadlines: O(log n) update, O(1) peek, and
//! no allocation once it has grown to the number of peers (so updating a
//! peer's deadline on every transport packet is allocation-free).

use natrix_proto::Instant;

const ABSENT: usize = usize::MAX;

/// Deadlines keyed by peer slot.
#[derive(Debug, Default)]
pub(crate) struct DeadlineHeap {
    /// Heap of (deadline, slot), ordered by (deadline, slot) so ties are deterministic.
    heap: Vec<(Instant, usize)>,
    /// `pos[slot]` = index of the slot's entry in `heap`, or `ABSENT`.
    pos: Vec<usize>,
}

impl DeadlineHeap {
    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<(Instant, usize)> {
        self.heap.first().copied()
    }

    /// Sets (or with `None` removes) the deadline of `slot`.
    pub(crate) fn set(&mut self, slot: usize, deadline: Option<Instant>) {
        if slot >= self.pos.len() {
            if deadline.is_none() {
                return;
            }
            self.pos.resize(slot + 1, ABSENT);
        }
        let at = self.pos[slot];
        match (at, deadline) {
            (ABSENT, None) => {}
            (ABSENT, Some(d)) => {
                self.heap.push((d, slot));
                let i = self.heap.len() - 1;
                self.pos[slot] = i;
                self.sift_up(i);
            }
            (i, None) => {
                let last = self.heap.len() - 1;
                self.swap(i, last);
                self.heap.pop();
                self.pos[slot] = ABSENT;
                if i < self.heap.len() {
                    self.sift_down(i);
                    self.sift_up(i);
                }
            }
            (i, Some(d)) => {
                let old = self.heap[i].0;
                self.heap[i].0 = d;
                if d < old {
                    self.sift_up(i);
                } else if d > old {
                    self.sift_down(i);
                }
            }
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a;
        self.pos[self.heap[b].1] = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] < self.heap[parent] {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let l = 2 * i + 1;
            let r = l + 1;
            let mut m = i;
            if l < self.heap.len() && self.heap[l] < self.heap[m] {
                m = l;
            }
            if r < self.heap.len() && self.heap[r] < self.heap[m] {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_sorted_set() {
        let mut h = DeadlineHeap::default();
        let mut model: Vec<Option<u64>> = vec![None; 20];
        let mut x: u64 = 12345;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let slot = usize::try_from((x >> 33) % 20).unwrap();
            let d = if (x >> 20) % 4 == 0 {
                None
            } else {
                Some((x >> 40) % 100)
            };
            h.set(slot, d.map(Instant::from_millis));
            model[slot] = d;
            let want = model
                .iter()
                .enumerate()
                .filter_map(|(s, d)| d.map(|d| (Instant::from_millis(d), s)))
                .min();
            assert_eq!(h.peek(), want);
        }
    }
}
