//! Stream cursors for CDN request collapsing (§10.1).
//!
//! Time is cut into 20-second intervals counted from 2024-10-09T00:00:00Z; a
//! cursor is the interval number. When a client echoes a cursor that is not
//! behind the current interval, the answer jumps ahead by a random 1–3600
//! seconds' worth of intervals so cursors never repeat or go backwards.

use rand::Rng;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of one cursor interval.
pub const INTERVAL_SECS: u64 = 20;
/// 2024-10-09T00:00:00Z as Unix seconds.
pub const EPOCH_UNIX_SECS: u64 = 1_728_432_000;

/// The interval number at `now`.
pub fn interval_at(now: SystemTime) -> u64 {
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    unix.saturating_sub(EPOCH_UNIX_SECS) / INTERVAL_SECS
}

/// The cursor to return, given the client's echoed `cursor` parameter.
pub fn next_cursor(now: SystemTime, echoed: Option<&str>, rng: &mut impl Rng) -> u64 {
    let current = interval_at(now);
    match echoed.and_then(|c| c.parse::<u64>().ok()) {
        Some(client) if client >= current => {
            let jitter_secs = rng.random_range(1..=3600u64);
            client.saturating_add(jitter_secs.div_ceil(INTERVAL_SECS))
        }
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_intervals_from_the_epoch() {
        let at = UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS + 45);
        assert_eq!(interval_at(at), 2);
        assert_eq!(interval_at(UNIX_EPOCH), 0);
    }

    #[test]
    fn echoed_cursors_always_advance() {
        let now = SystemTime::now();
        let current = interval_at(now);
        let mut rng = rand::rng();
        for echoed in [current, current + 1, current + 1000] {
            for _ in 0..100 {
                let next = next_cursor(now, Some(&echoed.to_string()), &mut rng);
                assert!(next > echoed && next <= echoed + 180);
            }
        }
        assert_eq!(next_cursor(now, Some("1"), &mut rng), current);
        assert_eq!(next_cursor(now, Some("garbage"), &mut rng), current);
        assert_eq!(next_cursor(now, None, &mut rng), current);
    }
}
