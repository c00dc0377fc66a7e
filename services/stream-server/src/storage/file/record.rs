//! The record format of the file engines' logs (and, framed the same way,
//! of `file-durable`'s journal entries): framing, the encoding of one
//! request's changes as a record body, decoding it again, and reading
//! framed records back with their checksums verified.
//!
//! A framed record is `len u32 | crc32 u32 | body` (little-endian), the
//! CRC-32 taken over the body. A body starts with its kind:
//! * soft delete: the kind byte alone;
//! * mutation: the kind byte, a flags byte, then the fields the flags name,
//!   in this order: data (`messages_end u64 | end u64 | count u32 |
//!   count × message end u32 | data`), producer (`epoch u64 | last seq u64 |
//!   id`), `Stream-Seq`, and the closing producer (`id | epoch u64 |
//!   seq u64`). Strings are `len u32 | UTF-8`.
//!
//! Reading has two steps, as in a wire protocol: [`Records`] finds whole
//! frames whose checksum holds (a torn or corrupt one is an error with its
//! reason, for the caller to cut the log there), then [`decode`] parses a
//! body.

use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerState;
use crate::storage::chunk::Chunk;
use crate::storage::{Close, ClosingProducer, Mutation, ProducerEntry, StorageError};
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Record header: body length and its CRC-32.
pub(super) const HEADER: usize = 8;
/// Bytes read per `pread` when scanning records.
const READ_BLOCK: usize = 256 * 1024;

const KIND_MUTATION: u8 = 1;
const KIND_SOFT_DELETE: u8 = 2;

const HAS_DATA: u8 = 1;
const HAS_PRODUCER: u8 = 2;
const HAS_SEQ: u8 = 4;
const CLOSES: u8 = 8;
const HAS_CLOSED_BY: u8 = 16;

/// Frames a record body: length, CRC-32, body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(body);
    frame_in_place(&mut out);
    out
}

/// Writes the length and CRC-32 of `framed[HEADER..]` into its header.
pub(super) fn frame_in_place(framed: &mut [u8]) {
    let (header, body) = framed.split_at_mut(HEADER);
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

/// The framed record that marks a stream soft-deleted.
pub(super) fn soft_delete_record() -> Vec<u8> {
    frame(&[KIND_SOFT_DELETE])
}

/// Encodes one request's changes as a framed record, advancing `tail`.
pub(super) fn encode_mutation(mutation: &Mutation, tail: &mut Offset) -> Vec<u8> {
    let mut flags = 0;
    // The header is filled in last; the body's fixed parts and the data
    // are sized up front so the record is built in one allocation.
    let data_len = mutation
        .data
        .as_ref()
        .map_or(0, |m| 20 + 4 * m.count() + m.byte_len());
    let mut body = Vec::with_capacity(HEADER + 2 + data_len + 64);
    body.extend_from_slice(&[0; HEADER]);
    body.extend_from_slice(&[KIND_MUTATION, 0]);
    if let Some(messages) = &mutation.data {
        flags |= HAS_DATA;
        let end = tail.bytes + messages.byte_len() as u64;
        let messages_end = tail.messages + messages.count() as u64;
        body.extend_from_slice(&messages_end.to_le_bytes());
        body.extend_from_slice(&end.to_le_bytes());
        body.extend_from_slice(&(messages.count() as u32).to_le_bytes());
        for &e in messages.ends() {
            body.extend_from_slice(&(e as u32).to_le_bytes());
        }
        body.extend_from_slice(messages.data());
        *tail = Offset::new(messages_end, end);
    }
    if let Some(ProducerEntry { id, state }) = &mutation.producer {
        flags |= HAS_PRODUCER;
        body.extend_from_slice(&state.epoch.to_le_bytes());
        body.extend_from_slice(&state.last_seq.to_le_bytes());
        put_str(&mut body, id);
    }
    if let Some(seq) = &mutation.stream_seq {
        flags |= HAS_SEQ;
        put_str(&mut body, seq);
    }
    if let Some(close) = &mutation.close {
        flags |= CLOSES;
        if let Some(ClosingProducer { id, epoch, seq }) = close.producer() {
            flags |= HAS_CLOSED_BY;
            put_str(&mut body, id);
            body.extend_from_slice(&epoch.to_le_bytes());
            body.extend_from_slice(&seq.to_le_bytes());
        }
    }
    body[HEADER + 1] = flags;
    frame_in_place(&mut body);
    body
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A mutation record's changes, decoded.
#[derive(Debug, Default)]
pub(super) struct MutationRecord {
    pub(super) chunk: Option<Chunk>,
    pub(super) producer: Option<ProducerEntry>,
    pub(super) stream_seq: Option<String>,
    pub(super) close: Option<Close>,
}

/// A decoded record body.
pub(super) enum Decoded {
    Mutation(MutationRecord),
    SoftDelete,
}

/// Reads fields from a record body.
struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let out = self
            .body
            .get(self.pos..self.pos + n)
            .ok_or_else(|| StorageError::Corrupt("record body is truncated".into()))?;
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, StorageError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| StorageError::Corrupt("record string is not UTF-8".into()))
    }
}

/// Decodes a verified record body; the data of a mutation is a slice of
/// `body`, not a copy.
pub(super) fn decode(body: &Bytes) -> Result<Decoded, StorageError> {
    let mut c = Cursor { body, pos: 0 };
    match c.take(1)?[0] {
        KIND_SOFT_DELETE => Ok(Decoded::SoftDelete),
        KIND_MUTATION => {
            let flags = c.take(1)?[0];
            let mut record = MutationRecord::default();
            if flags & HAS_DATA != 0 {
                let messages_end = c.u64()?;
                let end = c.u64()?;
                let count = c.u32()? as usize;
                let ends = (0..count).map(|_| c.u32()).collect::<Result<Vec<_>, _>>()?;
                let len = ends.last().copied().unwrap_or(0) as usize;
                let start = c.pos;
                c.take(len)?;
                record.chunk = Some(Chunk {
                    messages_end,
                    end,
                    ends,
                    data: body.slice(start..start + len),
                });
            }
            if flags & HAS_PRODUCER != 0 {
                let epoch = c.u64()?;
                let last_seq = c.u64()?;
                record.producer = Some(ProducerEntry {
                    id: c.string()?,
                    state: ProducerState { epoch, last_seq },
                });
            }
            if flags & HAS_SEQ != 0 {
                record.stream_seq = Some(c.string()?);
            }
            if flags & CLOSES != 0 {
                record.close = Some(if flags & HAS_CLOSED_BY != 0 {
                    let id = c.string()?;
                    let epoch = c.u64()?;
                    let seq = c.u64()?;
                    Close::By(ClosingProducer { id, epoch, seq })
                } else {
                    Close::Plain
                });
            }
            Ok(Decoded::Mutation(record))
        }
        other => Err(StorageError::Corrupt(format!(
            "unknown record kind {other}"
        ))),
    }
}

/// Sequential, checksum-verified reading of records with large `pread`s.
pub(super) struct Records<'a> {
    file: &'a File,
    /// Log position of the next record.
    pos: u64,
    /// Log length to read up to.
    len: u64,
    buffer: Bytes,
    /// Log position of `buffer[0]`.
    buffer_pos: u64,
}

impl<'a> Records<'a> {
    /// Records of `file` from position `pos` up to length `len`.
    pub(super) fn new(file: &'a File, pos: u64, len: u64) -> Self {
        Records {
            file,
            pos,
            len,
            buffer: Bytes::new(),
            buffer_pos: pos,
        }
    }

    /// Log position of the next record.
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes `[pos, pos + n)` of the log, reading more when needed.
    fn bytes(&mut self, pos: u64, n: usize) -> Result<Bytes, String> {
        let buffered_end = self.buffer_pos + self.buffer.len() as u64;
        if pos < self.buffer_pos || pos + n as u64 > buffered_end {
            let want = n.max(READ_BLOCK).min((self.len - pos) as usize);
            if want < n {
                return Err(format!(
                    "record at {} runs past the end of the log",
                    self.pos
                ));
            }
            let mut buf = vec![0u8; want];
            self.file
                .read_exact_at(&mut buf, pos)
                .map_err(|e| format!("read at {pos}: {e}"))?;
            self.buffer = Bytes::from(buf);
            self.buffer_pos = pos;
        }
        let at = (pos - self.buffer_pos) as usize;
        Ok(self.buffer.slice(at..at + n))
    }

    /// The next record's verified body; `Ok(None)` at the end of the log;
    /// `Err` with the reason for a torn or corrupt record.
    pub(super) fn next_record(&mut self) -> Result<Option<Bytes>, String> {
        if self.pos >= self.len {
            return Ok(None);
        }
        if self.len - self.pos < HEADER as u64 {
            return Err(format!("torn record header at {}", self.pos));
        }
        let header = self.bytes(self.pos, HEADER)?;
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // Every record has at least a kind byte; zeros are an unwritten tail.
        if body_len == 0 {
            return Err(format!("empty record at {}", self.pos));
        }
        let body = self.bytes(self.pos + HEADER as u64, body_len)?;
        if crc32fast::hash(&body) != crc {
            return Err(format!("checksum mismatch in record at {}", self.pos));
        }
        self.pos += (HEADER + body_len) as u64;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MessageBatch;
    use proptest::prelude::*;

    /// A scratch log file, removed on drop.
    struct ScratchLog(tempfile::NamedTempFile);

    impl ScratchLog {
        fn new(name: &str) -> Self {
            let file = tempfile::Builder::new()
                .prefix(&format!("ds-record-unit-{name}-"))
                .tempfile()
                .expect("create scratch log");
            ScratchLog(file)
        }

        /// The file, holding exactly `bytes`.
        fn holding(&self, bytes: &[u8]) -> &File {
            let file = self.0.as_file();
            file.set_len(0).expect("truncate");
            file.write_all_at(bytes, 0).expect("write");
            file
        }
    }

    fn messages(bodies: &[&[u8]]) -> MessageBatch {
        MessageBatch::of(bodies)
    }

    /// Everything a decoded mutation record holds, comparable.
    type Fields = (
        Option<(u64, u64, Vec<u32>, Vec<u8>)>,
        Option<ProducerEntry>,
        Option<String>,
        Option<Close>,
    );

    /// What decoding `mutation`'s record, appended at `tail`, must give.
    fn expected(mutation: &Mutation, tail: Offset) -> Fields {
        let chunk = mutation.data.as_ref().map(|m| {
            let chunk = Chunk::appended(m, tail);
            (chunk.messages_end, chunk.end, chunk.ends, m.data().to_vec())
        });
        (
            chunk,
            mutation.producer.clone(),
            mutation.stream_seq.clone(),
            mutation.close.clone(),
        )
    }

    fn fields(decoded: Decoded) -> Fields {
        let Decoded::Mutation(record) = decoded else {
            panic!("a soft delete, not a mutation");
        };
        (
            record
                .chunk
                .map(|c| (c.messages_end, c.end, c.ends, c.data.to_vec())),
            record.producer,
            record.stream_seq,
            record.close,
        )
    }

    /// The first record of `file`, read as a log of length `len`.
    fn read_one(file: &File, len: u64) -> Result<Option<Bytes>, String> {
        Records::new(file, 0, len).next_record()
    }

    #[test]
    fn a_record_is_length_checksum_then_body() {
        let mutation = Mutation {
            data: Some(messages(&[b"ab", b"c"])),
            producer: Some(ProducerEntry {
                id: "p".into(),
                state: ProducerState {
                    epoch: 2,
                    last_seq: 3,
                },
            }),
            stream_seq: Some("s".into()),
            close: Some(Close::By(ClosingProducer {
                id: "p".into(),
                epoch: 2,
                seq: 3,
            })),
        };
        let mut tail = Offset::new(1, 10);
        let record = encode_mutation(&mutation, &mut tail);
        assert_eq!(tail, Offset::new(3, 13));

        let mut body = vec![
            KIND_MUTATION,
            HAS_DATA | HAS_PRODUCER | HAS_SEQ | CLOSES | HAS_CLOSED_BY,
        ];
        body.extend_from_slice(&3u64.to_le_bytes()); // messages_end
        body.extend_from_slice(&13u64.to_le_bytes()); // end
        body.extend_from_slice(&2u32.to_le_bytes()); // count
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&2u64.to_le_bytes()); // producer epoch
        body.extend_from_slice(&3u64.to_le_bytes()); // producer last seq
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(b"p");
        body.extend_from_slice(&1u32.to_le_bytes()); // Stream-Seq
        body.extend_from_slice(b"s");
        body.extend_from_slice(&1u32.to_le_bytes()); // closed by
        body.extend_from_slice(b"p");
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        assert_eq!(record, framed);
    }

    #[test]
    fn a_soft_delete_is_one_kind_byte() {
        let record = soft_delete_record();
        assert_eq!(record.len(), HEADER + 1);
        let scratch = ScratchLog::new("soft-delete");
        let file = scratch.holding(&record);
        let body = read_one(file, record.len() as u64)
            .expect("valid")
            .expect("a record");
        assert!(matches!(decode(&body), Ok(Decoded::SoftDelete)));
    }

    #[test]
    fn a_close_without_a_producer_has_no_closing_request() {
        let mutation = Mutation {
            close: Some(Close::Plain),
            ..Mutation::default()
        };
        let mut tail = Offset::ZERO;
        let record = encode_mutation(&mutation, &mut tail);
        let decoded = decode(&Bytes::copy_from_slice(&record[HEADER..])).expect("decode");
        assert_eq!(fields(decoded), (None, None, None, Some(Close::Plain)));
        assert_eq!(tail, Offset::ZERO);
    }

    #[test]
    fn records_are_read_in_turn_across_read_blocks() {
        let large = vec![b'x'; READ_BLOCK + 10];
        let mut log = Vec::new();
        let mut tail = Offset::ZERO;
        let mut expected_fields = Vec::new();
        for body in [&b"first"[..], &large, b"last"] {
            let mutation = Mutation {
                data: Some(messages(&[body])),
                ..Mutation::default()
            };
            expected_fields.push(expected(&mutation, tail));
            log.extend(encode_mutation(&mutation, &mut tail));
        }
        let scratch = ScratchLog::new("in-turn");
        let file = scratch.holding(&log);
        let mut records = Records::new(file, 0, log.len() as u64);
        for want in expected_fields {
            let body = records.next_record().expect("valid").expect("a record");
            assert_eq!(fields(decode(&body).expect("decode")), want);
        }
        assert_eq!(records.next_record(), Ok(None));
        assert_eq!(records.pos(), log.len() as u64);
    }

    #[test]
    fn zeros_where_a_record_should_be_are_an_empty_record() {
        let scratch = ScratchLog::new("zeros");
        let file = scratch.holding(&[0; 64]);
        let read = read_one(file, 64);
        assert!(read.is_err_and(|reason| reason.contains("empty record")));
    }

    #[test]
    fn an_unknown_kind_is_corrupt() {
        let body = Bytes::from_static(&[9, 0, 0]);
        assert!(matches!(decode(&body), Err(StorageError::Corrupt(_))));
    }

    fn string() -> impl Strategy<Value = String> {
        ".{0,6}"
    }

    fn arbitrary_messages() -> impl Strategy<Value = MessageBatch> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..4).prop_map(|bodies| {
            let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            messages(&bodies)
        })
    }

    fn arbitrary_mutation() -> impl Strategy<Value = Mutation> {
        let producer = (string(), any::<u64>(), any::<u64>()).prop_map(|(id, epoch, last_seq)| {
            ProducerEntry {
                id,
                state: ProducerState { epoch, last_seq },
            }
        });
        let closed_by = (string(), any::<u64>(), any::<u64>())
            .prop_map(|(id, epoch, seq)| ClosingProducer { id, epoch, seq });
        let close = prop_oneof![Just(Close::Plain), closed_by.prop_map(Close::By),];
        (
            prop::option::of(arbitrary_messages()),
            prop::option::of(producer),
            prop::option::of(string()),
            prop::option::of(close),
        )
            .prop_map(|(data, producer, stream_seq, close)| Mutation {
                data,
                producer,
                stream_seq,
                close,
            })
    }

    fn arbitrary_tail() -> impl Strategy<Value = Offset> {
        (0..u64::MAX / 2, 0..u64::MAX / 2)
            .prop_map(|(messages, bytes)| Offset::new(messages, bytes))
    }

    proptest! {
        #[test]
        fn every_mutation_round_trips(mutation in arbitrary_mutation(), tail in arbitrary_tail()) {
            let mut advanced = tail;
            let record = encode_mutation(&mutation, &mut advanced);
            let want = expected(&mutation, tail);
            if let Some((messages_end, end, _, _)) = &want.0 {
                prop_assert_eq!(advanced, Offset::new(*messages_end, *end));
            } else {
                prop_assert_eq!(advanced, tail);
            }
            let scratch = ScratchLog::new("round-trip");
            let file = scratch.holding(&record);
            let mut records = Records::new(file, 0, record.len() as u64);
            let body = records.next_record().expect("valid").expect("a record");
            prop_assert_eq!(records.next_record(), Ok(None));
            prop_assert_eq!(fields(decode(&body).expect("decode")), want);
        }

        /// A log cut anywhere inside its last record (a torn write) reads
        /// the records before it, then reports the torn one; and a body cut
        /// short never decodes.
        #[test]
        fn every_truncation_is_torn(
            first in arbitrary_mutation(),
            mutation in arbitrary_mutation(),
        ) {
            let mut tail = Offset::ZERO;
            let mut log = encode_mutation(&first, &mut tail);
            let first_len = log.len();
            let first_body = Bytes::copy_from_slice(&log[HEADER..]);
            let record = encode_mutation(&mutation, &mut tail);
            log.extend_from_slice(&record);
            let scratch = ScratchLog::new("truncation");
            let file = scratch.holding(&log);
            for len in first_len + 1..log.len() {
                let mut records = Records::new(file, 0, len as u64);
                prop_assert_eq!(records.next_record(), Ok(Some(first_body.clone())));
                prop_assert!(records.next_record().is_err(), "cut at {}", len);
            }
            let body = Bytes::copy_from_slice(&record[HEADER..]);
            for len in 0..body.len() {
                prop_assert!(decode(&body.slice(..len)).is_err(), "body cut at {}", len);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Flipping any one bit of a record (length, checksum or body) is
        /// reported, never read as a different record.
        #[test]
        fn every_bit_flip_is_detected(mutation in arbitrary_mutation()) {
            let mut tail = Offset::ZERO;
            let mut record = encode_mutation(&mutation, &mut tail);
            let original = Bytes::copy_from_slice(&record[HEADER..]);
            let scratch = ScratchLog::new("bit-flip");
            let file = scratch.holding(&record);
            for bit in 0..record.len() * 8 {
                let at = bit / 8;
                record[at] ^= 1 << (bit % 8);
                file.write_all_at(&record[at..=at], at as u64).expect("flip");
                let read = read_one(file, record.len() as u64);
                prop_assert!(
                    match &read {
                        Err(_) => true,
                        Ok(Some(body)) => *body == original,
                        Ok(None) => false,
                    },
                    "bit {} read as {:?}",
                    bit,
                    read
                );
                record[at] ^= 1 << (bit % 8);
                file.write_all_at(&record[at..=at], at as u64).expect("restore");
            }
        }
    }
}
