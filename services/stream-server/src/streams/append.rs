//! `POST`: appending to a stream and closing it (§5.2, §5.3), with
//! idempotent producers (§5.2.1) and `Stream-Seq` ordering.

use super::stream::closing_producer;
use super::{Stream, StreamError, Streams, log_bytes};
use crate::protocol::headers::{ProducerHeaders, has_media_type};
use crate::protocol::json::{self, JsonContext};
use crate::protocol::offset::Offset;
use crate::protocol::producer::{self, ProducerCheck, ProducerRejection, ProducerState};
use crate::storage::{Close, Commit, MessageBatch, Mutation, ProducerEntry};
use crate::telemetry;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

/// What a `POST` asks for.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    pub content_type: Option<String>,
    pub body: Bytes,
    pub close: bool,
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerHeaders>,
}

/// The result of a successful `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub next: Offset,
    pub closed: bool,
    /// The producer's state after the request, when producer headers were sent.
    pub producer: Option<ProducerState>,
    /// Whether this request appended new data (false for duplicates and
    /// close-only requests).
    pub appended: bool,
}

impl Streams {
    /// Appends to, and optionally closes, the stream at `path` (§5.2, §5.3).
    pub async fn append(
        &self,
        path: &str,
        request: AppendRequest,
    ) -> Result<AppendOutcome, StreamError> {
        let stream = self.get(path, true)?;
        if request.body.is_empty() && !request.close {
            return Err(StreamError::EmptyAppend);
        }
        let bytes = request.body.len();
        let (outcome, commit) = match self.submit_append(&stream, request) {
            Ok(submitted) => submitted,
            // Refusing because of a close another request made: only once
            // that close is durable.
            Err(StreamError::Closed { next }) => {
                stream.settled(next, true).await?;
                return Err(StreamError::Closed { next });
            }
            Err(e) => return Err(e),
        };
        match commit {
            // Acknowledge, and let readers see it, only once it is durable.
            Some(commit) => {
                let span = super::commit_span(&commit, "append", bytes);
                let durable = commit.wait().instrument(span);
                if let Err(e) = durable.await {
                    self.fail(&stream, &e);
                    return Err(e.into());
                }
                stream.publish(outcome.next, outcome.closed, false);
                if outcome.appended
                    && let Some(observer) = self.observer()
                {
                    observer.appended(&stream);
                }
            }
            // Nothing new to store: the answer rests on earlier requests'
            // changes, so it waits for those to be durable.
            None => stream.settled(outcome.next, outcome.closed).await?,
        }
        Ok(outcome)
    }

    /// Validates an append under the stream's lock and submits it to
    /// storage; the returned commit says when it is durable (`None`: the
    /// request changed nothing).
    fn submit_append(
        &self,
        stream: &Arc<Stream>,
        request: AppendRequest,
    ) -> Result<(AppendOutcome, Option<Commit>), StreamError> {
        let config = &stream.config;
        // Framing reads the whole body: do it before taking the lock, and
        // report its errors only where the protocol ranks them.
        let framed = if request.body.is_empty() {
            None
        } else {
            Some(match &request.content_type {
                None => Err(StreamError::MissingContentType),
                Some(ct) if !has_media_type(ct, &config.media_type) => {
                    Err(StreamError::ContentTypeMismatch {
                        sent: ct.clone(),
                        expected: config.content_type.clone(),
                    })
                }
                Some(_) if config.is_json() => json::frame(
                    &request.body,
                    JsonContext::Append,
                    self.limits.max_json_depth,
                )
                .map(MessageBatch::from)
                .map_err(StreamError::from),
                Some(_) => Ok(MessageBatch::single(request.body.clone())),
            })
        };

        let mut state = stream.state.lock();
        if state.failed {
            return Err(StreamError::Unavailable);
        }
        if state.removed || state.soft_deleted {
            return Err(if state.soft_deleted {
                StreamError::Gone
            } else {
                StreamError::NotFound
            });
        }
        let mut sequence_gap = None;
        let producer_check = match &request.producer {
            None => None,
            Some(p) => {
                let known = state.producers.get(&p.id).copied();
                match producer::check(known, p.epoch, p.seq) {
                    Ok(ProducerCheck::Duplicate { state: known }) => {
                        let outcome = AppendOutcome {
                            next: state.log.tail(),
                            closed: state.closed,
                            producer: Some(known),
                            appended: false,
                        };
                        return Ok((outcome, None));
                    }
                    Ok(ProducerCheck::Accept { next }) => Some((p, next)),
                    // A gap ranks below closure and content checks (§5.2).
                    Err(gap @ ProducerRejection::SequenceGap { .. }) => {
                        sequence_gap = Some(gap);
                        None
                    }
                    Err(rejection) => return Err(rejection.into()),
                }
            }
        };
        if state.closed {
            if request.body.is_empty() {
                let outcome = AppendOutcome {
                    next: state.log.tail(),
                    closed: true,
                    producer: producer_check.map(|(_, next)| next),
                    appended: false,
                };
                return Ok((outcome, None));
            }
            return Err(StreamError::Closed {
                next: state.log.tail(),
            });
        }
        let messages = framed.transpose()?;
        if let Some(gap) = sequence_gap {
            return Err(gap.into());
        }
        if let (Some(sent), Some(last)) = (&request.stream_seq, &state.last_seq)
            && sent.as_bytes() <= last.as_bytes()
        {
            return Err(StreamError::SequenceRegression {
                sent: sent.clone(),
                last: last.clone(),
            });
        }
        let added = messages.as_ref().map_or(0, |m| m.byte_len() as u64);
        self.reserve(log_bytes(&*state.log), added)?;

        // Every check passed: store the whole request as one mutation.
        let appended = messages.is_some();
        let count = messages.as_ref().map_or(0, MessageBatch::count);
        let mutation = Mutation {
            data: messages,
            producer: producer_check.map(|(p, next)| ProducerEntry {
                id: p.id.clone(),
                state: next,
            }),
            stream_seq: request.stream_seq.clone(),
            close: request.close.then(|| match producer_check {
                Some((p, _)) => Close::By(closing_producer(p)),
                None => Close::Plain,
            }),
        };
        let commit = match state.log.apply(mutation) {
            Ok(commit) => commit,
            Err(e) => {
                self.memory_used.fetch_sub(added, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        telemetry::appended(added as usize, count);
        if let Some(seq) = request.stream_seq {
            state.last_seq = Some(seq);
        }
        if let Some((p, next)) = &producer_check {
            state.producers.insert(p.id.clone(), *next);
        }
        if request.close {
            state.closed = true;
            state.closed_by = producer_check.map(|(p, _)| p.clone());
        }
        let outcome = AppendOutcome {
            next: state.log.tail(),
            closed: state.closed,
            producer: producer_check.map(|(_, next)| next),
            appended,
        };
        Ok((outcome, Some(commit)))
    }
}
