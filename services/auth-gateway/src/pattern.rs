//! Stream path patterns limiting a token to some streams.
//!
//! A pattern is `/`-separated segments over stream paths relative to the
//! stream base path (`chat/room-1`): `*` matches exactly one segment, `**`
//! any number of segments (zero included), anything else itself. Matching is
//! plain string comparison, so characters with meaning elsewhere (`%`, `_`,
//! quotes) are inert.

use std::fmt;
use std::str::{FromStr, Split};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

/// A parsed stream path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern {
    text: String,
    segments: Vec<Segment>,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a stream pattern must not be empty")]
    Empty,
    #[error("stream pattern {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("stream pattern {0:?} mixes '*' with other characters in one segment")]
    PartialWildcard(String),
}

impl FromStr for StreamPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let segments = text
            .split('/')
            .map(|segment| match segment {
                "" => Err(PatternError::EmptySegment(text.to_owned())),
                "*" => Ok(Segment::One),
                "**" => Ok(Segment::Any),
                s if s.contains('*') => Err(PatternError::PartialWildcard(text.to_owned())),
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(StreamPattern {
            text: text.to_owned(),
            segments,
        })
    }
}

impl fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl StreamPattern {
    /// Whether `path` (relative to the stream base path) matches.
    pub fn matches(&self, path: &str) -> bool {
        matches_from(&self.segments, path.split('/'))
    }
}

/// Segment-wise matching over the path's remaining segments (an iterator,
/// so nothing is collected per request); `**` tries every split, which
/// stays cheap because patterns and paths have few segments (paths are
/// limited upstream).
fn matches_from(pattern: &[Segment], mut path: Split<'_, char>) -> bool {
    match pattern.split_first() {
        None => path.next().is_none(),
        Some((Segment::Any, rest)) => loop {
            if matches_from(rest, path.clone()) {
                return true;
            }
            if path.next().is_none() {
                return false;
            }
        },
        Some((segment, rest)) => match path.next() {
            None => false,
            Some(first) => {
                let head_matches = match segment {
                    Segment::One => true,
                    Segment::Literal(literal) => literal == first,
                    Segment::Any => unreachable!("handled above"),
                };
                head_matches && matches_from(rest, path)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> StreamPattern {
        text.parse().expect("valid pattern")
    }

    #[test]
    fn wildcards() {
        assert!(p("chat/**").matches("chat/a"));
        assert!(p("chat/**").matches("chat/a/b/c"));
        assert!(p("chat/**").matches("chat"), "** matches zero segments");
        assert!(!p("chat/**").matches("chatroom/a"));
        assert!(p("chat/*").matches("chat/a"));
        assert!(!p("chat/*").matches("chat/a/b"));
        assert!(!p("chat/*").matches("chat"));
        assert!(p("**").matches("anything/at/all"));
        assert!(p("a/**/z").matches("a/z"));
        assert!(p("a/**/z").matches("a/b/c/z"));
        assert!(!p("a/**/z").matches("a/b/c"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exact/more"));
    }

    #[test]
    fn sql_and_glob_metacharacters_are_literal() {
        assert!(p("a%").matches("a%"));
        assert!(!p("a%").matches("abc"));
        assert!(!p("a_").matches("ab"));
        assert!(p("x';--").matches("x';--"));
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!("".parse::<StreamPattern>(), Err(PatternError::Empty));
        assert!(matches!(
            "a//b".parse::<StreamPattern>(),
            Err(PatternError::EmptySegment(_))
        ));
        assert!(matches!(
            "a*".parse::<StreamPattern>(),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            "a/***".parse::<StreamPattern>(),
            Err(PatternError::PartialWildcard(_))
        ));
    }

    proptest! {
        #[test]
        fn a_literal_pattern_matches_only_itself(
            a in "[a-z]{1,3}(/[a-z]{1,3}){0,3}",
            b in "[a-z]{1,3}(/[a-z]{1,3}){0,3}",
        ) {
            prop_assert!(p(&a).matches(&a));
            prop_assert_eq!(p(&a).matches(&b), a == b);
        }

        #[test]
        fn double_star_suffix_matches_every_extension(
            prefix in "[a-z]{1,3}(/[a-z]{1,3}){0,2}",
            rest in "(/[a-z]{1,3}){0,4}",
        ) {
            let pattern = p(&format!("{prefix}/**"));
            let path = format!("{prefix}{rest}");
            prop_assert!(pattern.matches(&path));
        }
    }
}
