//! Offset tokens (PROTOCOL.md §8).
//!
//! An offset is rendered as `<messages>_<bytes>`, each a 16-digit lowercase
//! hexadecimal number: the count of messages before the position and the
//! byte position itself. Fixed width makes lexicographic order equal numeric
//! order, and neither sentinel (`-1`, `now`) can ever be produced.

use std::fmt;
use std::str::FromStr;

/// A position in a stream.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Offset {
    /// Messages stored before this position.
    pub messages: u64,
    /// Bytes stored before this position.
    pub bytes: u64,
}

/// Length of a rendered offset: two 16-digit numbers and the separator.
const ENCODED_LEN: usize = 33;

impl Offset {
    /// The start of every stream that is not a fork.
    pub const ZERO: Offset = Offset {
        messages: 0,
        bytes: 0,
    };

    pub fn new(messages: u64, bytes: u64) -> Self {
        Offset { messages, bytes }
    }

    /// The rendered token as ASCII bytes. Every response carries one, so
    /// this writes the digits directly instead of going through `fmt`.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'_'; ENCODED_LEN];
        for (field, value) in [(0, self.messages), (17, self.bytes)] {
            for i in 0..16 {
                out[field + i] = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        out
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        // Hex digits and '_' only: always ASCII.
        f.write_str(std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?)
    }
}

/// Why a string is not an offset this server could have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed offset: expected two 16-digit lowercase hex numbers joined by '_'")]
pub struct MalformedOffset;

impl FromStr for Offset {
    type Err = MalformedOffset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != ENCODED_LEN || s.as_bytes()[16] != b'_' {
            return Err(MalformedOffset);
        }
        let hex = |part: &str| {
            if part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                u64::from_str_radix(part, 16).map_err(|_| MalformedOffset)
            } else {
                Err(MalformedOffset)
            }
        };
        Ok(Offset {
            messages: hex(&s[..16])?,
            bytes: hex(&s[17..])?,
        })
    }
}

/// Where a read starts, as given by the `offset` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no offset: the beginning of the stream.
    Start,
    /// `now`: the tail at the time the request is processed.
    Now,
    /// A concrete offset previously returned by the server.
    At(Offset),
}

impl FromStr for ReadFrom {
    type Err = MalformedOffset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "-1" => Ok(ReadFrom::Start),
            "now" => Ok(ReadFrom::Now),
            other => other.parse().map(ReadFrom::At),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quickstart_offsets_render_as_documented() {
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
        assert_eq!(
            Offset::new(1, 11).to_string(),
            "0000000000000001_000000000000000b"
        );
    }

    #[test]
    fn sentinels_and_garbage() {
        assert_eq!("-1".parse::<ReadFrom>(), Ok(ReadFrom::Start));
        assert_eq!("now".parse::<ReadFrom>(), Ok(ReadFrom::Now));
        for bad in [
            "",
            "-2",
            "abc",
            "0000000000000001-000000000000000b",
            "0000000000000001_000000000000000B",
            "0000000000000001_00000000000000g0",
            "+000000000000001_000000000000000b",
            "0000000000000001_000000000000000b0",
        ] {
            assert_eq!(bad.parse::<Offset>(), Err(MalformedOffset), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(m: u64, b: u64) {
            let offset = Offset::new(m, b);
            prop_assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset));
        }

        #[test]
        fn encoding_is_two_zero_padded_lowercase_hex_numbers(m: u64, b: u64) {
            let offset = Offset::new(m, b);
            prop_assert_eq!(offset.to_string(), format!("{m:016x}_{b:016x}"));
        }

        #[test]
        fn string_order_matches_numeric_order(a: (u64, u64), b: (u64, u64)) {
            let (x, y) = (Offset::new(a.0, a.1), Offset::new(b.0, b.1));
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<ReadFrom>();
        }
    }
}
