//! The replay window of one receive key (RFC 6479): a ring of 128 64-bit words, 8192
//! bits, of which 8128 behind the highest counter seen are usable. [`Window::check`]
//! before decryption drops what is clearly old or seen; [`Window::update`] after the tag
//! verified records the counter, so a forged packet never moves the window.

const WORDS: usize = 128;
const BITS: u64 = (WORDS as u64) * 64;
/// How far behind the highest counter seen a counter is still accepted (one word of the
/// ring is the one being cleared as the window slides).
pub const USABLE: u64 = BITS - 64;

/// A replay window.
#[derive(Debug, Clone)]
pub struct Window {
    words: [u64; WORDS],
    /// The highest counter recorded (0 before any).
    last: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            words: [0; WORDS],
            last: 0,
        }
    }
}

impl Window {
    /// True if `c` may be new: ahead of the window, or inside it and not yet seen.
    pub fn check(&self, c: u64) -> bool {
        if c > self.last {
            return true;
        }
        if self.last - c >= USABLE {
            return false;
        }
        let (word, bit) = Self::slot(c);
        self.words[word] & (1 << bit) == 0
    }

    /// Records `c` (after its packet was authenticated); false if it was a replay or too
    /// old after all (another packet got there first).
    pub fn update(&mut self, c: u64) -> bool {
        if !self.check(c) {
            return false;
        }
        if c > self.last {
            let cur = self.last >> 6;
            let new = c >> 6;
            let clear = (new - cur).min(WORDS as u64);
            for i in 1..=clear {
                self.words[((cur + i) % WORDS as u64) as usize] = 0;
            }
            self.last = c;
        }
        let (word, bit) = Self::slot(c);
        self.words[word] |= 1 << bit;
        true
    }

    fn slot(c: u64) -> (usize, u64) {
        (((c >> 6) % WORDS as u64) as usize, c & 63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn edges_of_the_window() {
        let mut w = Window::default();
        assert!(w.update(0));
        assert!(!w.update(0), "a replay of the first");
        assert!(w.update(10_000));
        assert!(!w.check(10_000 - USABLE), "just outside");
        assert!(w.update(10_000 - USABLE + 1), "the oldest usable");
        assert!(!w.update(10_000 - USABLE + 1));
        assert!(w.update(9_999), "late but inside");
        // A far jump clears everything behind.
        assert!(w.update(1 << 40));
        assert!(!w.check(9_999));
        assert!(w.check((1 << 40) - 1));
        assert!(w.update(u64::MAX - 1));
        assert!(!w.update(u64::MAX - 1));
    }

    /// The model: a counter is accepted iff never seen and within USABLE of the highest
    /// seen before it.
    fn model(seq: &[u64]) -> Vec<bool> {
        let mut seen = BTreeSet::new();
        let mut last = 0u64;
        seq.iter()
            .map(|&c| {
                let ok = !seen.contains(&c) && (c > last || last - c < USABLE);
                if ok {
                    seen.insert(c);
                    last = last.max(c);
                }
                ok
            })
            .collect()
    }

    proptest! {
        #[test]
        fn agrees_with_the_model(
            start in 0u64..1 << 20,
            steps in proptest::collection::vec((0u64..3, 0u64..20_000), 1..400),
        ) {
            // Counters around a moving front: mostly forward, some late, some repeats.
            let mut front = start;
            let mut seq = Vec::new();
            for (kind, d) in steps {
                let c = match kind {
                    0 => { front += d % 300; front }
                    1 => front.saturating_sub(d),
                    _ => *seq.last().unwrap_or(&front),
                };
                seq.push(c);
            }
            let mut w = Window::default();
            let got: Vec<bool> = seq.iter().map(|&c| w.update(c)).collect();
            prop_assert_eq!(got, model(&seq));
        }
    }
}
