//! The anti-replay window for transport counters (S2).
//!
//! Every transport packet carries a 64-bit counter. A receiver accepts each
//! counter at most once, accepts counters that arrive out of order as long as
//! they are within [`WINDOW`] of the highest one seen, and refuses everything
//! older. The state is a fixed ring of bits: no allocation, O(1) per packet
//! (a forward jump clears at most the whole ring once).
//!
//! The endpoint calls [`ReplayWindow::check`] before decrypting (cheap rejection)
//! and [`ReplayWindow::commit`] only after the packet authenticated, so a forged
//! packet can never mark a counter as used.

use core::fmt;

/// How far behind the highest accepted counter a counter may be and still be
/// accepted: with highest `h`, counters `h - WINDOW + 1 ..= h` (the ones not yet
/// seen) are accepted, anything `<= h - WINDOW` is refused.
pub const WINDOW: u64 = 4096;

/// Bits per ring word.
const WORD_BITS: u64 = 64;

/// Ring words. The window can straddle `WINDOW / 64 + 1` words when the highest
/// counter is not at the end of a word, hence the extra one.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// A sliding anti-replay bitmap over `u64` counters (S2).
///
/// A fresh window accepts any counter. Counter `u64::MAX` is an ordinary counter
/// (after it, nothing newer exists and everything else is a duplicate or old).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest committed counter (0 while nothing was committed: the bitmap is
    /// then empty, which makes every counter acceptable, as it should be).
    highest: u64,
    /// Bit `c % 64` of word `(c / 64) % WORDS` is set when counter `c` (within
    /// the window) was committed.
    ring: [u64; WORDS],
}

impl ReplayWindow {
    /// The window size; the same as the module-level [`WINDOW`].
    pub const WINDOW: u64 = WINDOW;

    /// An empty window: every counter is acceptable.
    #[must_use]
    pub const fn new() -> Self {
        ReplayWindow {
            highest: 0,
            ring: [0; WORDS],
        }
    }

    /// Where counter `c` lives in the ring: (word index, bit mask).
    fn slot(counter: u64) -> (usize, u64) {
        // `WORDS` is tiny, so the remainder fits in usize on every platform.
        let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % WORD_BITS))
    }

    fn bit(&self, counter: u64) -> bool {
        let (word, mask) = Self::slot(counter);
        self.ring.get(word).is_some_and(|w| w & mask != 0)
    }

    /// Would `counter` be accepted? No state change.
    ///
    /// True for a counter above the highest committed one, and for an
    /// uncommitted counter within [`WINDOW`] below it; false for duplicates and
    /// for anything `<= highest - WINDOW`.
    #[must_use]
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        if self.highest - counter >= WINDOW {
            return false;
        }
        !self.bit(counter)
    }

    /// Marks `counter` as received. Returns false (and changes nothing) when
    /// [`check`](Self::check) would have refused it: a duplicate or too old.
    ///
    /// A counter above the highest slides the window forward; a jump by more
    /// than the window simply forgets everything before it.
    pub fn commit(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter > self.highest {
            let old_word = self.highest / WORD_BITS;
            let new_word = counter / WORD_BITS;
            // Words strictly after the old highest's word up to the new one hold
            // bits of counters that left the window: clear them (each at most once).
            let advance = (new_word - old_word).min(WORDS as u64);
            for step in 1..=advance {
                let (word, _) = Self::slot((old_word + step) * WORD_BITS);
                if let Some(w) = self.ring.get_mut(word) {
                    *w = 0;
                }
            }
            self.highest = counter;
        }
        let (word, mask) = Self::slot(counter);
        if let Some(w) = self.ring.get_mut(word) {
            *w |= mask;
        }
        true
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let marked: u32 = self.ring.iter().map(|w| w.count_ones()).sum();
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .field("marked", &marked)
            .finish()
    }
}
