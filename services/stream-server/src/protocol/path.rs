//! Stream path validation (§12.2): what may name a stream.
//!
//! A path is the part of the URL after the stream base path, for example
//! `chat/room-1`. It must be non-empty, within the configured length and
//! segment limits, free of empty, `.` and `..` segments, control characters
//! and backslashes, and must not start with the reserved `__ds` segment (§6).

/// Limits a stream path must respect.
#[derive(Debug, Clone, Copy)]
pub struct PathLimits {
    pub max_bytes: usize,
    pub max_segments: usize,
}

/// Why a path cannot name a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("stream path is empty")]
    Empty,
    #[error("stream path is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("stream path has {count} segments; the limit is {max}")]
    TooManySegments { count: usize, max: usize },
    #[error("stream path contains an empty, '.' or '..' segment")]
    Traversal,
    #[error("stream path contains a control character or backslash")]
    BadCharacter,
    #[error("paths starting with '__ds' are reserved for Durable Streams control APIs")]
    Reserved,
}

/// Checks a percent-decoded stream path against the rules above.
pub fn validate(path: &str, limits: PathLimits) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > limits.max_bytes {
        return Err(PathError::TooLong {
            len: path.len(),
            max: limits.max_bytes,
        });
    }
    let bad_character = if path.is_ascii() {
        path.bytes().any(|b| b.is_ascii_control() || b == b'\\')
    } else {
        path.chars().any(|c| c.is_control() || c == '\\')
    };
    if bad_character {
        return Err(PathError::BadCharacter);
    }
    let mut count = 0;
    for segment in path.split('/') {
        count += 1;
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PathError::Traversal);
        }
        if count == 1 && segment == "__ds" {
            return Err(PathError::Reserved);
        }
    }
    if count > limits.max_segments {
        return Err(PathError::TooManySegments {
            count,
            max: limits.max_segments,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PathLimits = PathLimits {
        max_bytes: 64,
        max_segments: 4,
    };

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "a",
            "chat/room-1",
            "x/y/z/w",
            "émoji-✓",
            "a.b/..c",
            "x/__ds",
        ] {
            assert_eq!(validate(ok, LIMITS), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn rejects_unsafe_paths() {
        assert_eq!(validate("", LIMITS), Err(PathError::Empty));
        assert_eq!(validate("a/../b", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("./a", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a//b", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a/", LIMITS), Err(PathError::Traversal));
        assert_eq!(validate("a\\b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(validate("a\0b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(validate("a\u{7f}b", LIMITS), Err(PathError::BadCharacter));
        // C1 controls are two bytes in UTF-8.
        assert_eq!(validate("é\u{85}b", LIMITS), Err(PathError::BadCharacter));
        assert_eq!(
            validate("__ds/subscriptions/x", LIMITS),
            Err(PathError::Reserved)
        );
        assert!(matches!(
            validate("a/b/c/d/e", LIMITS),
            Err(PathError::TooManySegments { .. })
        ));
        assert!(matches!(
            validate(&"a".repeat(65), LIMITS),
            Err(PathError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = validate(&s, LIMITS);
        }

        #[test]
        fn refuses_exactly_the_control_characters_and_backslash(s in "[a-z/\\x00-\\x20\\x7f-\\u{a0}\\\\]{1,20}") {
            let expected = s.chars().any(|c| c.is_control() || c == '\\');
            prop_assert_eq!(validate(&s, LIMITS) == Err(PathError::BadCharacter), expected);
        }
    }
}
