//! The idempotent producer state machine (§5.2.1): epoch fencing and
//! per-epoch sequence validation. Callers serialise calls per
//! `(stream, producer id)` and persist the returned state with the append.

/// What the server remembers about one producer on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: u64,
    /// Highest sequence number accepted in `epoch`.
    pub last_seq: u64,
}

/// The outcome of checking a producer's `(epoch, seq)` against its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// New data: append it, then store `next` as the producer's state.
    Accept { next: ProducerState },
    /// Already appended: answer with success and append nothing.
    Duplicate { state: ProducerState },
}

/// Why a producer's request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProducerRejection {
    /// 403: a newer epoch has fenced this producer.
    #[error("producer epoch {received} is stale; the current epoch is {current}")]
    StaleEpoch { current: u64, received: u64 },
    /// 400: a new epoch must begin at sequence 0.
    #[error("a new producer epoch must start at Producer-Seq 0, got {received}")]
    EpochMustStartAtZero { received: u64 },
    /// 409: one or more earlier sequence numbers never arrived.
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SequenceGap { expected: u64, received: u64 },
}

/// Validates `(epoch, seq)` against the stored state of the producer, if any.
pub fn check(
    state: Option<ProducerState>,
    epoch: u64,
    seq: u64,
) -> Result<ProducerCheck, ProducerRejection> {
    let Some(state) = state else {
        return if seq == 0 {
            Ok(ProducerCheck::Accept {
                next: ProducerState { epoch, last_seq: 0 },
            })
        } else {
            Err(ProducerRejection::SequenceGap {
                expected: 0,
                received: seq,
            })
        };
    };
    if epoch < state.epoch {
        return Err(ProducerRejection::StaleEpoch {
            current: state.epoch,
            received: epoch,
        });
    }
    if epoch > state.epoch {
        return if seq == 0 {
            Ok(ProducerCheck::Accept {
                next: ProducerState { epoch, last_seq: 0 },
            })
        } else {
            Err(ProducerRejection::EpochMustStartAtZero { received: seq })
        };
    }
    if seq <= state.last_seq {
        return Ok(ProducerCheck::Duplicate { state });
    }
    if seq == state.last_seq + 1 {
        return Ok(ProducerCheck::Accept {
            next: ProducerState {
                epoch,
                last_seq: seq,
            },
        });
    }
    Err(ProducerRejection::SequenceGap {
        expected: state.last_seq + 1,
        received: seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: ProducerState = ProducerState {
        epoch: 2,
        last_seq: 5,
    };

    #[test]
    fn follows_the_validation_table() {
        assert_eq!(
            check(Some(S), 1, 9),
            Err(ProducerRejection::StaleEpoch {
                current: 2,
                received: 1
            })
        );
        assert_eq!(
            check(Some(S), 3, 1),
            Err(ProducerRejection::EpochMustStartAtZero { received: 1 })
        );
        assert_eq!(
            check(Some(S), 3, 0),
            Ok(ProducerCheck::Accept {
                next: ProducerState {
                    epoch: 3,
                    last_seq: 0
                }
            })
        );
        assert_eq!(
            check(Some(S), 2, 5),
            Ok(ProducerCheck::Duplicate { state: S })
        );
        assert_eq!(
            check(Some(S), 2, 0),
            Ok(ProducerCheck::Duplicate { state: S })
        );
        assert_eq!(
            check(Some(S), 2, 6),
            Ok(ProducerCheck::Accept {
                next: ProducerState {
                    epoch: 2,
                    last_seq: 6
                }
            })
        );
        assert_eq!(
            check(Some(S), 2, 8),
            Err(ProducerRejection::SequenceGap {
                expected: 6,
                received: 8
            })
        );
    }

    #[test]
    fn unknown_producer_starts_at_zero_in_any_epoch() {
        assert!(matches!(
            check(None, 7, 0),
            Ok(ProducerCheck::Accept { .. })
        ));
        assert_eq!(
            check(None, 0, 1),
            Err(ProducerRejection::SequenceGap {
                expected: 0,
                received: 1
            })
        );
    }

    proptest! {
        /// Replaying any accepted request is always a duplicate, never new data.
        #[test]
        fn replays_are_duplicates(seqs in proptest::collection::vec(0u64..4, 1..40)) {
            let mut state = None;
            let mut accepted = Vec::new();
            for seq in seqs {
                if let Ok(ProducerCheck::Accept { next }) = check(state, 0, seq) {
                    state = Some(next);
                    accepted.push(seq);
                }
            }
            for seq in accepted {
                let is_duplicate = matches!(check(state, 0, seq), Ok(ProducerCheck::Duplicate { .. }));
                prop_assert!(is_duplicate);
            }
        }
    }
}
