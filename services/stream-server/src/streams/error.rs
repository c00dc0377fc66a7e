//! Why a stream operation was refused, in protocol terms. The HTTP layer
//! turns each variant into a status code in one place (`http::error`).

use crate::protocol::json::JsonError;
use crate::protocol::offset::Offset;
use crate::protocol::producer::ProducerRejection;
use crate::storage::StorageError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    #[error("stream not found")]
    NotFound,
    #[error("stream has been deleted")]
    Gone,
    #[error("a stream already exists at this path with a different configuration")]
    ConfigMismatch,
    #[error("this path belongs to a deleted stream that forks still read from")]
    PathRetired,
    #[error("stream is closed")]
    Closed { next: Offset },
    #[error("content type {sent:?} does not match the stream's {expected:?}")]
    ContentTypeMismatch { sent: String, expected: String },
    #[error("Content-Type is required when appending data")]
    MissingContentType,
    #[error("an append needs a body, unless Stream-Closed: true closes the stream")]
    EmptyAppend,
    #[error("Stream-Seq {sent:?} does not follow the last sequence {last:?}")]
    SequenceRegression { sent: String, last: String },
    #[error(transparent)]
    Producer(#[from] ProducerRejection),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("offset {offset} is not a position in this stream")]
    OffsetNotInStream { offset: Offset },
    #[error("fork source stream not found")]
    ForkSourceNotFound,
    #[error("fork source stream has been deleted")]
    ForkSourceGone,
    #[error("fork offset {offset} is beyond the source stream's tail {tail}")]
    ForkOffsetBeyondTail { offset: Offset, tail: Offset },
    #[error("Stream-Fork-Sub-Offset {sub_offset} reaches past the next message boundary")]
    ForkSubOffsetOutOfRange { sub_offset: u64 },
    #[error("the stream would grow to {size} bytes; the limit is {limit}")]
    StreamTooLarge { size: u64, limit: u64 },
    #[error("the server's memory limit of {limit} bytes is reached")]
    OutOfMemory { limit: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the stream is unavailable after a storage failure; it is restored at restart")]
    Unavailable,
}
