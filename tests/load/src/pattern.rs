//! The deterministic byte pattern that the read and churn scenarios write,
//! so every byte read back can be checked against the byte that must be at
//! its position — whatever chunk boundaries the server chose.
//!
//! The pattern is a sequence of 64-bit words, word `k` being a SplitMix64
//! mix of `seed + k` in little-endian order; it has no short period, so a
//! misplaced chunk shows up as a mismatch.

/// A pattern, fixed by its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    seed: u64,
}

/// The first byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Absolute position in the stream.
    pub position: u64,
    pub expected: u8,
    pub found: u8,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    /// The eight bytes of word `index`.
    fn word(&self, index: u64) -> [u8; 8] {
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Calls `visit(offset_in_range, expected_bytes)` for consecutive
    /// pieces covering `len` bytes from `position`, one word at a time.
    fn pieces(&self, position: u64, len: usize, mut visit: impl FnMut(usize, &[u8]) -> bool) {
        let mut done = 0usize;
        while done < len {
            let absolute = position + done as u64;
            let word = self.word(absolute / 8);
            let within = (absolute % 8) as usize;
            let take = (8 - within).min(len - done);
            if !visit(done, &word[within..within + take]) {
                return;
            }
            done += take;
        }
    }

    /// Writes the pattern bytes for `position..position + buffer.len()`.
    pub fn fill(&self, position: u64, buffer: &mut [u8]) {
        self.pieces(position, buffer.len(), |at, expected| {
            buffer[at..at + expected.len()].copy_from_slice(expected);
            true
        });
    }

    /// The pattern bytes for `position..position + len`.
    pub fn bytes(&self, position: u64, len: usize) -> Vec<u8> {
        let mut buffer = vec![0; len];
        self.fill(position, &mut buffer);
        buffer
    }

    /// Checks `data`, found at `position`, against the pattern.
    pub fn verify(&self, position: u64, data: &[u8]) -> Result<(), Mismatch> {
        let mut mismatch = None;
        self.pieces(position, data.len(), |at, expected| {
            let found = &data[at..at + expected.len()];
            if found == expected {
                return true;
            }
            if let Some(i) = found.iter().zip(expected).position(|(a, b)| a != b) {
                mismatch = Some(Mismatch {
                    position: position + (at + i) as u64,
                    expected: expected[i],
                    found: found[i],
                });
            }
            false
        });
        match mismatch {
            Some(mismatch) => Err(mismatch),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = Pattern::new(1).bytes(0, 64);
        assert_eq!(a, Pattern::new(1).bytes(0, 64));
        assert_ne!(a, Pattern::new(2).bytes(0, 64));
    }

    #[test]
    fn pieces_at_any_position_match_the_whole() {
        let pattern = Pattern::new(42);
        let whole = pattern.bytes(0, 1000);
        for start in [0usize, 1, 7, 8, 9, 15, 500, 999] {
            for len in [0usize, 1, 3, 8, 17, 1000 - start] {
                let len = len.min(1000 - start);
                assert_eq!(
                    pattern.bytes(start as u64, len),
                    whole[start..start + len],
                    "start {start} len {len}"
                );
            }
        }
    }

    #[test]
    fn verify_accepts_chunks_in_any_split() {
        let pattern = Pattern::new(7);
        let whole = pattern.bytes(0, 4096);
        let mut position = 0usize;
        for size in [1usize, 5, 8, 13, 100, 1000, 2969] {
            let chunk = &whole[position..position + size];
            assert_eq!(pattern.verify(position as u64, chunk), Ok(()));
            position += size;
        }
        assert_eq!(position, 4096);
    }

    #[test]
    fn verify_reports_the_first_wrong_byte() {
        let pattern = Pattern::new(7);
        let mut data = pattern.bytes(100, 50);
        data[21] ^= 0xFF;
        data[30] ^= 0x01;
        let mismatch = pattern.verify(100, &data).unwrap_err();
        assert_eq!(mismatch.position, 121);
        assert_eq!(mismatch.found, data[21]);
        assert_eq!(mismatch.expected, data[21] ^ 0xFF);
    }

    #[test]
    fn verify_detects_a_chunk_at_the_wrong_place() {
        let pattern = Pattern::new(7);
        let chunk = pattern.bytes(0, 64);
        assert!(pattern.verify(8, &chunk).is_err());
        assert!(pattern.verify(1, &chunk).is_err());
    }
}
