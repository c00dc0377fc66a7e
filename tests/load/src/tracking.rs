//! Bookkeeping of the message sequence numbers one subscriber has seen, to
//! check exactly-once, in-order delivery: each new number is classified as
//! in order, a duplicate, or a reorder (new, but below one already seen);
//! whatever was sent but never seen is lost.

/// Sequence numbers beyond this are rejected rather than tracked (the
/// writer never gets near it; a larger one means garbage in a message).
pub const MAX_TRACKED_SEQ: u64 = 1 << 32;

/// How one received sequence number was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    Duplicate,
    Reordered,
    OutOfRange,
}

/// The sequence numbers one subscriber has seen.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    next_expected: u64,
}

impl SequenceTracker {
    pub fn new() -> SequenceTracker {
        SequenceTracker::default()
    }

    /// Records one arrival.
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= MAX_TRACKED_SEQ {
            return Arrival::OutOfRange;
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq >= self.next_expected {
            // A jump ahead leaves a gap, which is lost unless it arrives
            // later (as a reorder).
            self.next_expected = seq + 1;
            Arrival::InOrder
        } else {
            self.reordered += 1;
            Arrival::Reordered
        }
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Arrivals of a number already seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// New numbers that arrived after a higher one.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Whether every number below `sent` has been seen.
    pub fn has_all(&self, sent: u64) -> bool {
        self.unique >= sent && self.lost(sent) == 0
    }

    /// The lowest number below `sent` never seen.
    pub fn first_missing(&self, sent: u64) -> Option<u64> {
        (0..sent).find(|&seq| {
            let word = (seq / 64) as usize;
            self.seen
                .get(word)
                .is_none_or(|bits| bits & (1u64 << (seq % 64)) == 0)
        })
    }

    /// Numbers below `sent` never seen.
    pub fn lost(&self, sent: u64) -> u64 {
        let full_words = (sent / 64) as usize;
        let mut seen = 0u64;
        for (index, word) in self.seen.iter().enumerate() {
            if index < full_words {
                seen += u64::from(word.count_ones());
            } else if index == full_words {
                let mask = (1u64 << (sent % 64)) - 1;
                seen += u64::from((word & mask).count_ones());
            }
        }
        sent - seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivery_is_clean() {
        let mut tracker = SequenceTracker::new();
        for seq in 0..1000 {
            assert_eq!(tracker.record(seq), Arrival::InOrder);
        }
        assert_eq!(tracker.unique(), 1000);
        assert_eq!(tracker.lost(1000), 0);
        assert!(tracker.has_all(1000));
        assert_eq!(tracker.duplicates() + tracker.reordered(), 0);
    }

    #[test]
    fn counts_losses_duplicates_and_reorders() {
        let mut tracker = SequenceTracker::new();
        for seq in [0, 1, 3, 3, 2, 5, 1] {
            tracker.record(seq);
        }
        assert_eq!(tracker.unique(), 5);
        assert_eq!(tracker.duplicates(), 2);
        assert_eq!(tracker.reordered(), 1);
        // 4 never came; 6 and 7 were sent but not delivered.
        assert_eq!(tracker.lost(8), 3);
        assert!(!tracker.has_all(6));
        assert!(tracker.has_all(4));
        assert_eq!(tracker.first_missing(8), Some(4));
        assert_eq!(tracker.first_missing(4), None);
        assert_eq!(SequenceTracker::new().first_missing(3), Some(0));
    }

    #[test]
    fn lost_handles_word_boundaries() {
        let mut tracker = SequenceTracker::new();
        for seq in 0..64 {
            tracker.record(seq);
        }
        assert_eq!(tracker.lost(64), 0);
        assert_eq!(tracker.lost(65), 1);
        assert_eq!(tracker.lost(200), 136);
        assert_eq!(tracker.lost(0), 0);
    }

    #[test]
    fn rejects_absurd_numbers() {
        let mut tracker = SequenceTracker::new();
        assert_eq!(tracker.record(u64::MAX), Arrival::OutOfRange);
        assert_eq!(tracker.unique(), 0);
    }
}
