//! [`MessageBatch`]: the messages of one append (or of a new stream) on
//! their way into storage.
//!
//! The data is a [`Bytes`], so a binary request body becomes the batch
//! without a copy, and engines that keep data in memory can hold slices of
//! it. JSON bodies are re-encoded once by [`json::frame`] and moved in.
//!
//! [`json::frame`]: crate::protocol::json::frame

use crate::protocol::json::JsonMessages;
use bytes::Bytes;

/// Messages stored together: their bytes, back to back, and where each ends.
///
/// Invariant: `ends` never decreases and its last entry is `data.len()`;
/// an empty batch has neither data nor ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageBatch {
    data: Bytes,
    ends: Vec<usize>,
}

impl MessageBatch {
    /// A body that is one message, as every non-JSON body is. `body` must
    /// not be empty: the protocol has no empty messages.
    pub fn single(body: Bytes) -> MessageBatch {
        debug_assert!(!body.is_empty(), "a message has at least one byte");
        let ends = vec![body.len()];
        MessageBatch { data: body, ends }
    }

    /// The batch of `messages`, in order.
    pub fn of<M: AsRef<[u8]>>(messages: impl IntoIterator<Item = M>) -> MessageBatch {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for message in messages {
            data.extend_from_slice(message.as_ref());
            ends.push(data.len());
        }
        MessageBatch {
            data: data.into(),
            ends,
        }
    }

    /// All messages' bytes, back to back.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The end of each message within [`data`](Self::data).
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// How many bytes the batch holds.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// How many messages the batch holds.
    pub fn count(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl From<JsonMessages> for MessageBatch {
    /// Takes over the framed JSON's buffer; nothing is copied.
    fn from(messages: JsonMessages) -> MessageBatch {
        MessageBatch {
            data: Bytes::from(messages.encoded),
            ends: messages.ends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_body_becomes_the_batch_without_a_copy() {
        let body = Bytes::from(vec![7u8; 4096]);
        let batch = MessageBatch::single(body.clone());
        assert_eq!(batch.data().as_ptr(), body.as_ptr());
        assert_eq!(batch.ends(), &[4096]);
        assert_eq!(batch.count(), 1);
    }

    #[test]
    fn framed_json_is_moved_in() {
        let framed = JsonMessages {
            encoded: b"1,[2],".to_vec(),
            ends: vec![2, 6],
        };
        let buffer = framed.encoded.as_ptr();
        let batch = MessageBatch::from(framed);
        assert_eq!(batch.data().as_ptr(), buffer);
        assert_eq!(batch, MessageBatch::of(["1,", "[2],"]));
    }

    #[test]
    fn separate_messages_are_concatenated_with_their_ends() {
        let batch = MessageBatch::of(["ab", "cde"]);
        assert_eq!(batch.data().as_ref(), b"abcde");
        assert_eq!(batch.ends(), &[2, 5]);
        assert_eq!(batch.byte_len(), 5);
        assert!(MessageBatch::of(Vec::<&[u8]>::new()).is_empty());
    }
}
