//! Which appends no ack has covered yet, and when they were sent: the
//! bookkeeping behind the wake latency.
//!
//! Each stream keeps its appends in send order, each with the offset after
//! it (`Stream-Next-Offset`) once the answer came back. An ack of the
//! stream at offset `O` covers every append whose end is at or before `O`
//! (offsets compare lexicographically, PROTOCOL §8); an append still in
//! flight when its stream is acked is judged when its answer arrives. The
//! oldest entry of a stream is then the send time of the oldest data a
//! worker has not yet been woken for.
//!
//! One lock per stream: appenders writing to different streams never
//! meet, and the worker takes each stream's lock only for the streams a
//! claim names.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Identifies one append within its stream's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// One append not covered by an ack.
#[derive(Debug)]
struct Entry {
    ticket: u64,
    sent_us: u64,
    /// The offset after the append, once its answer arrived.
    end: Option<String>,
}

/// One stream's uncovered appends.
#[derive(Debug, Default)]
struct StreamEntries {
    next_ticket: u64,
    /// The highest offset acked so far.
    acked: Option<String>,
    entries: VecDeque<Entry>,
}

impl StreamEntries {
    fn covers(&self, end: &str) -> bool {
        self.acked.as_deref().is_some_and(|acked| end <= acked)
    }
}

/// Every stream's uncovered appends.
#[derive(Debug)]
pub struct Ledger {
    streams: Vec<Mutex<StreamEntries>>,
    /// Entries held over all streams.
    outstanding: AtomicU64,
}

impl Ledger {
    pub fn new(streams: usize) -> Ledger {
        Ledger {
            streams: (0..streams)
                .map(|_| Mutex::new(StreamEntries::default()))
                .collect(),
            outstanding: AtomicU64::new(0),
        }
    }

    fn stream(&self, stream: usize) -> MutexGuard<'_, StreamEntries> {
        // A panicking holder cannot leave the entries inconsistent.
        self.streams[stream]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An append to `stream` is about to be sent at `sent_us`.
    pub fn sent(&self, stream: usize, sent_us: u64) -> Ticket {
        let mut entries = self.stream(stream);
        let ticket = entries.next_ticket;
        entries.next_ticket += 1;
        entries.entries.push_back(Entry {
            ticket,
            sent_us,
            end: None,
        });
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Ticket(ticket)
    }

    /// The append's answer: the offset after it, or `None` when it failed
    /// (its data did not land, so nothing will wake for it). An append an
    /// earlier ack already covers is done with.
    pub fn landed(&self, stream: usize, ticket: Ticket, end: Option<String>) {
        let mut entries = self.stream(stream);
        let Some(index) = entries
            .entries
            .iter()
            .rposition(|entry| entry.ticket == ticket.0)
        else {
            return;
        };
        let covered = end.as_deref().is_none_or(|end| entries.covers(end));
        if covered {
            entries.entries.remove(index);
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        } else {
            entries.entries[index].end = end;
        }
    }

    /// `stream` was acked at `offset`: the appends ending at or before it
    /// are covered. Returns how many entries that removed.
    pub fn acked(&self, stream: usize, offset: &str) -> u64 {
        let mut entries = self.stream(stream);
        if !entries.covers(offset) {
            entries.acked = Some(offset.to_owned());
        }
        let before = entries.entries.len();
        entries
            .entries
            .retain(|entry| entry.end.as_deref().is_none_or(|end| end > offset));
        let removed = (before - entries.entries.len()) as u64;
        self.outstanding.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// The send time of `stream`'s oldest uncovered append.
    pub fn oldest(&self, stream: usize) -> Option<u64> {
        self.stream(stream)
            .entries
            .front()
            .map(|entry| entry.sent_us)
    }

    /// Uncovered appends over all streams (in flight included).
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// The two latencies of one wake, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeSample {
    /// From the moment the subscription could wake — it had pending data
    /// and no wake out — to the wake event's arrival: the later of the
    /// oldest uncovered append's send time and the previous wake's end
    /// (the send time of its `done` ack).
    pub wake_us: u64,
    /// From the oldest uncovered append's send time to the wake event's
    /// arrival, however long a previous wake held the subscription.
    pub data_wait_us: u64,
}

impl WakeSample {
    /// The sample of a wake event received at `received_us`, whose
    /// oldest uncovered append was sent at `oldest_us`, the previous wake
    /// having ended at `idle_since_us`.
    pub fn new(received_us: u64, oldest_us: u64, idle_since_us: u64) -> WakeSample {
        WakeSample {
            wake_us: received_us.saturating_sub(oldest_us.max(idle_since_us)),
            data_wait_us: received_us.saturating_sub(oldest_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_cover_appends_up_to_their_offset() {
        let ledger = Ledger::new(2);
        let a = ledger.sent(0, 10);
        let b = ledger.sent(0, 20);
        let c = ledger.sent(1, 15);
        ledger.landed(0, a, Some("0_1".into()));
        ledger.landed(0, b, Some("0_2".into()));
        ledger.landed(1, c, Some("0_1".into()));
        assert_eq!(ledger.outstanding(), 3);
        assert_eq!(ledger.oldest(0), Some(10));

        assert_eq!(ledger.acked(0, "0_1"), 1);
        assert_eq!(ledger.oldest(0), Some(20));
        assert_eq!(ledger.oldest(1), Some(15));
        assert_eq!(ledger.outstanding(), 2);

        // An older ack does not move the cursor back.
        assert_eq!(ledger.acked(0, "0_0"), 0);
        assert_eq!(ledger.acked(0, "0_2"), 1);
        assert_eq!(ledger.oldest(0), None);
        assert_eq!(ledger.outstanding(), 1);
    }

    #[test]
    fn an_append_in_flight_at_the_ack_is_judged_when_it_lands() {
        let ledger = Ledger::new(1);
        let early = ledger.sent(0, 5);
        let late = ledger.sent(0, 6);
        // The ack comes before either answer: both entries stay.
        assert_eq!(ledger.acked(0, "0_7"), 0);
        assert_eq!(ledger.oldest(0), Some(5));
        // The first landed before the acked offset: covered.
        ledger.landed(0, early, Some("0_7".into()));
        assert_eq!(ledger.oldest(0), Some(6));
        // The second landed after it: still waiting for a wake.
        ledger.landed(0, late, Some("0_8".into()));
        assert_eq!(ledger.oldest(0), Some(6));
        assert_eq!(ledger.outstanding(), 1);
    }

    #[test]
    fn failed_appends_are_forgotten() {
        let ledger = Ledger::new(1);
        let failed = ledger.sent(0, 1);
        let ok = ledger.sent(0, 2);
        ledger.landed(0, failed, None);
        ledger.landed(0, ok, Some("0_1".into()));
        assert_eq!(ledger.oldest(0), Some(2));
        assert_eq!(ledger.outstanding(), 1);
        // An unknown ticket changes nothing.
        ledger.landed(0, failed, Some("0_1".into()));
        assert_eq!(ledger.outstanding(), 1);
    }

    #[test]
    fn offsets_compare_lexicographically() {
        let ledger = Ledger::new(1);
        let t = ledger.sent(0, 1);
        ledger.landed(0, t, Some("0000000000000001_0000000000000100".into()));
        assert_eq!(ledger.acked(0, "0000000000000001_0000000000000099"), 0);
        assert_eq!(ledger.acked(0, "0000000000000001_0000000000000100"), 1);
    }

    #[test]
    fn wake_latency_starts_when_the_subscription_could_wake() {
        // Data waiting since 100; the previous wake ended at 400; the event
        // arrived at 450.
        let sample = WakeSample::new(450, 100, 400);
        assert_eq!(sample.wake_us, 50);
        assert_eq!(sample.data_wait_us, 350);
        // An idle subscription: the append itself made it pending.
        let idle = WakeSample::new(450, 420, 400);
        assert_eq!(idle.wake_us, 30);
        assert_eq!(idle.data_wait_us, 30);
        // Clocks never make a latency negative.
        assert_eq!(WakeSample::new(10, 20, 30).wake_us, 0);
    }
}
