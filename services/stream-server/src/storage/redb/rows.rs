//! The byte layout of the acid engine's chunk values. A `chunks` value is
//! a [`ChunkHeader`] followed by the append's data; a `recent` value is the
//! stream id and the end byte (little-endian `u64`s), followed by what the
//! `chunks` value will be once settled.

use super::io;
use crate::storage::StorageError;
use crate::storage::chunk::Chunk;
use bytes::Bytes;

/// Bytes before a chunk value in a `recent` row: stream id and end byte.
pub(super) const RECENT_PREFIX: usize = 16;

/// The fixed part of a chunk value: where its messages end.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ChunkHeader {
    /// Messages in the stream up to the end of this chunk.
    pub(super) messages_end: u64,
    /// End of each message, relative to the chunk's start.
    pub(super) ends: Vec<u32>,
}

impl ChunkHeader {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.messages_end.to_le_bytes());
        out.extend_from_slice(&(self.ends.len() as u32).to_le_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_le_bytes());
        }
    }

    /// Decodes the header; returns it and the length it took.
    fn decode_with_len(value: &[u8]) -> Result<(Self, usize), StorageError> {
        let corrupt = || StorageError::Corrupt("chunk header is truncated".into());
        let messages_end = u64::from_le_bytes(
            value
                .get(..8)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        );
        let count = u32::from_le_bytes(
            value
                .get(8..12)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        ) as usize;
        let header_len = 12 + 4 * count;
        let raw = value.get(12..header_len).ok_or_else(corrupt)?;
        let ends = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((ChunkHeader { messages_end, ends }, header_len))
    }

    pub(super) fn decode(value: &[u8]) -> Result<Self, StorageError> {
        Self::decode_with_len(value).map(|(header, _)| header)
    }
}

/// The `recent` row of an append of `data` to stream `id` ending at stream
/// byte `end`; its `chunks` value is the part after [`RECENT_PREFIX`].
pub(super) fn recent_value(id: u64, end: u64, header: &ChunkHeader, data: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECENT_PREFIX + 12 + 4 * header.ends.len() + data.len());
    value.extend_from_slice(&id.to_le_bytes());
    value.extend_from_slice(&end.to_le_bytes());
    header.encode_into(&mut value);
    value.extend_from_slice(data);
    value
}

/// A row of `chunks` as a range scan yields it.
pub(super) type ChunkRow<'a> = Result<
    (
        ::redb::AccessGuard<'a, (u64, u64)>,
        ::redb::AccessGuard<'a, &'static [u8]>,
    ),
    ::redb::StorageError,
>;

/// Decodes a `chunks` row.
pub(super) fn decode_row(row: ChunkRow<'_>) -> Result<Chunk, StorageError> {
    let (key, value) = row.map_err(io)?;
    decode_chunk(key.value().1, value.value())
}

/// Splits a `recent` row into its stream id, end byte and `chunks` value.
pub(super) fn split_recent(value: &[u8]) -> Result<(u64, u64, &[u8]), StorageError> {
    let corrupt = || StorageError::Corrupt("recent append is truncated".into());
    let (prefix, chunk) = value.split_at_checked(RECENT_PREFIX).ok_or_else(corrupt)?;
    let (id, end) = prefix.split_at(8);
    let id = u64::from_le_bytes(id.try_into().map_err(|_| corrupt())?);
    let end = u64::from_le_bytes(end.try_into().map_err(|_| corrupt())?);
    Ok((id, end, chunk))
}

/// Decodes a `recent` row.
pub(super) fn decode_recent(value: &[u8]) -> Result<Chunk, StorageError> {
    let (_, end, chunk) = split_recent(value)?;
    decode_chunk(end, chunk)
}

/// Decodes the value of a chunk ending at stream byte `end`.
fn decode_chunk(end: u64, value: &[u8]) -> Result<Chunk, StorageError> {
    let (header, header_len) = ChunkHeader::decode_with_len(value)?;
    let data = Bytes::copy_from_slice(&value[header_len..]);
    if header.ends.last().map(|&e| e as usize) != Some(data.len()) {
        return Err(StorageError::Corrupt(format!(
            "chunk ending at byte {end} does not match its message index"
        )));
    }
    Ok(Chunk {
        messages_end: header.messages_end,
        end,
        ends: header.ends,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_truncation() {
        let header = ChunkHeader {
            messages_end: 7,
            ends: vec![3, 9],
        };
        let mut encoded = Vec::new();
        header.encode_into(&mut encoded);
        assert_eq!(ChunkHeader::decode(&encoded).expect("decode"), header);
        assert!(ChunkHeader::decode(&encoded[..10]).is_err());
    }

    #[test]
    fn a_recent_row_splits_into_its_stream_end_and_chunk() {
        let header = ChunkHeader {
            messages_end: 2,
            ends: vec![3, 5],
        };
        let value = recent_value(9, 105, &header, b"abcde");
        let (id, end, chunk) = split_recent(&value).expect("split");
        assert_eq!((id, end), (9, 105));
        let decoded = decode_recent(&value).expect("decode");
        assert_eq!(chunk.len(), value.len() - RECENT_PREFIX);
        assert_eq!(
            (
                decoded.messages_end,
                decoded.end,
                decoded.ends,
                &decoded.data[..]
            ),
            (2, 105, vec![3, 5], &b"abcde"[..])
        );
        assert!(split_recent(&value[..RECENT_PREFIX - 1]).is_err());
    }

    #[test]
    fn a_chunk_whose_data_disagrees_with_its_index_is_corrupt() {
        let header = ChunkHeader {
            messages_end: 1,
            ends: vec![4],
        };
        let value = recent_value(1, 4, &header, b"abc");
        assert!(matches!(
            decode_recent(&value),
            Err(StorageError::Corrupt(_))
        ));
    }
}
