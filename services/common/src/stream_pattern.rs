//! Stream path patterns: the streams a gateway token may touch, and the
//! streams a subscription covers (PROTOCOL §6.2), under one definition.
//!
//! A pattern is `/`-separated segments over stream paths relative to the
//! stream base path (`chat/room-1`): `*` matches exactly one segment, `**`
//! any number of segments (zero included), anything else itself. Matching is
//! plain string comparison, so characters with meaning elsewhere (`%`, `_`,
//! quotes) are inert.
//!
//! Matching runs on every request and takes time proportional to path
//! segments times pattern segments, whatever the path. Containment (one
//! pattern covering everything another matches) bounds the patterns an
//! admin token may hand out, and the subscriptions a token may create.

use std::fmt;
use std::str::FromStr;

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
        let states = self.segments.len() + 1;
        if states <= WORD_BITS {
            let mut current = [0u64; 1];
            let mut next = [0u64; 1];
            run(&self.segments, path, &mut current, &mut next)
        } else {
            // Patterns this long are rare, so only they pay for the heap.
            let words = states.div_ceil(WORD_BITS);
            let mut buffer = vec![0u64; 2 * words];
            let (current, next) = buffer.split_at_mut(words);
            run(&self.segments, path, current, next)
        }
    }

    /// Whether every path `other` matches is also matched by `self`, so a
    /// token limited to `self` may hand out `other` without gaining
    /// anything.
    ///
    /// Sound, and exact except in one case: a `*` of `self` never stands
    /// for part of what a `**` of `other` matches. That only loses answers
    /// when `self` has a `*` and a `**` in one run of consecutive wildcards,
    /// as in `*/**`: it holds every path with at least one segment, so it
    /// contains `**/*`, `**/x` and (since no path is empty) `**`, yet none
    /// of those is recognised. `**/*` contains the same paths and is not
    /// recognised as containing `*/**` either. Spelling the wider pattern
    /// without mixed runs (`**` there) gets the expected answer. The tests
    /// check this exhaustively on small patterns.
    pub fn contains(&self, other: &StreamPattern) -> bool {
        contains(&self.segments, &other.segments)
    }
}

const WORD_BITS: usize = u64::BITS as usize;

/// Runs the pattern as a nondeterministic automaton over the path's
/// segments: state `i` means "the first `i` pattern segments matched what
/// has been read". The states still alive form a bitset, one bit per state,
/// so each path segment costs one pass over the pattern whatever its
/// wildcards. Trying every split of each `**` instead takes time growing
/// as the path length to the power of the number of `**`, seconds for one
/// long path.
///
/// `current` and `next` hold at least `pattern.len() + 1` bits each.
fn run(pattern: &[Segment], path: &str, current: &mut [u64], next: &mut [u64]) -> bool {
    let accept = pattern.len();
    let (mut current, mut next) = (current, next);
    current.fill(0);
    set(current, 0);
    skip_empty_matches(pattern, current);
    for segment in path.split('/') {
        next.fill(0);
        let mut alive = false;
        for (word_index, &word) in current.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let state = word_index * WORD_BITS + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let to = match pattern.get(state) {
                    // The whole pattern is used up: another segment kills it.
                    None => continue,
                    // `**` swallows the segment and stays.
                    Some(Segment::Any) => state,
                    Some(Segment::One) => state + 1,
                    Some(Segment::Literal(literal)) if literal == segment => state + 1,
                    Some(Segment::Literal(_)) => continue,
                };
                set(next, to);
                alive = true;
            }
        }
        if !alive {
            return false;
        }
        skip_empty_matches(pattern, next);
        std::mem::swap(&mut current, &mut next);
    }
    get(current, accept)
}

/// Adds the states reachable by letting `**` match nothing. Going up in
/// order carries the bit through a run of several `**`.
fn skip_empty_matches(pattern: &[Segment], states: &mut [u64]) {
    for (state, segment) in pattern.iter().enumerate() {
        if *segment == Segment::Any && get(states, state) {
            set(states, state + 1);
        }
    }
}

fn set(bits: &mut [u64], index: usize) {
    bits[index / WORD_BITS] |= 1 << (index % WORD_BITS);
}

fn get(bits: &[u64], index: usize) -> bool {
    bits[index / WORD_BITS] & (1 << (index % WORD_BITS)) != 0
}

/// Containment by dynamic programming over pattern positions:
/// `within[i][j]` says whether `outer[i..]` matches every path that
/// `inner[j..]` matches, filled from the ends backwards (each entry needs
/// only later ones), so the work is one step per pair of positions.
///
/// The rules, each of which keeps the answer sound:
/// * both patterns used up: contained;
/// * `**` in `outer` may match nothing (`within[i + 1][j]`) or take
///   whatever `inner[j]` matches, one segment or many, and stay
///   (`within[i][j + 1]`);
/// * `*` in `outer` covers a `*` or a literal in `inner`, not a `**`
///   (which may match no segment or several);
/// * a literal covers only the same literal;
/// * anything left over in `inner` is not covered by an empty `outer`.
fn contains(outer: &[Segment], inner: &[Segment]) -> bool {
    let columns = inner.len() + 1;
    // Row `i` at `i * columns`; the last row is `outer` used up.
    let mut within = vec![false; (outer.len() + 1) * columns];
    within[outer.len() * columns + inner.len()] = true;
    for i in (0..outer.len()).rev() {
        for j in (0..=inner.len()).rev() {
            let below = (i + 1) * columns;
            within[i * columns + j] = match (&outer[i], inner.get(j)) {
                (Segment::Any, next) => {
                    within[below + j] || (next.is_some() && within[i * columns + j + 1])
                }
                (_, None) => false,
                (Segment::One, Some(Segment::One | Segment::Literal(_))) => within[below + j + 1],
                (Segment::One, Some(Segment::Any)) => false,
                (Segment::Literal(outer), Some(Segment::Literal(inner))) => {
                    outer == inner && within[below + j + 1]
                }
                (Segment::Literal(_), Some(_)) => false,
            };
        }
    }
    within[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

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

    /// The obvious matcher, trying every split of `**`: slow on long
    /// paths, but easy to trust.
    fn reference(pattern: &[Segment], path: &[&str]) -> bool {
        match pattern.split_first() {
            None => path.is_empty(),
            Some((Segment::Any, rest)) => {
                (0..=path.len()).any(|taken| reference(rest, &path[taken..]))
            }
            Some((segment, rest)) => match path.split_first() {
                None => false,
                Some((first, others)) => {
                    let head = match segment {
                        Segment::Literal(literal) => literal == first,
                        _ => true,
                    };
                    head && reference(rest, others)
                }
            },
        }
    }

    fn reference_matches(pattern: &StreamPattern, path: &str) -> bool {
        reference(&pattern.segments, &path.split('/').collect::<Vec<_>>())
    }

    /// Every path of `1..=max_len` segments over `alphabet`.
    fn all_paths(alphabet: &[&str], max_len: usize) -> Vec<String> {
        let mut paths: Vec<String> = Vec::new();
        let mut previous: Vec<String> = vec![String::new()];
        for _ in 0..max_len {
            let longer: Vec<String> = previous
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |segment| {
                        if prefix.is_empty() {
                            (*segment).to_owned()
                        } else {
                            format!("{prefix}/{segment}")
                        }
                    })
                })
                .collect();
            paths.extend(longer.iter().cloned());
            previous = longer;
        }
        paths
    }

    /// Every pattern of `1..=max_len` segments over `alphabet`.
    fn all_patterns(alphabet: &[&str], max_len: usize) -> Vec<StreamPattern> {
        all_paths(alphabet, max_len).iter().map(|t| p(t)).collect()
    }

    /// Whether a run of consecutive wildcards holds both `*` and `**`, the
    /// one shape [`StreamPattern::contains`] is documented to fall short on.
    fn has_mixed_run(pattern: &StreamPattern) -> bool {
        pattern
            .segments
            .split(|s| matches!(s, Segment::Literal(_)))
            .any(|run| run.contains(&Segment::One) && run.contains(&Segment::Any))
    }

    /// Small patterns and paths over a tiny alphabet, so wildcards and
    /// literals collide often; `c` never appears in patterns, standing for
    /// every other name.
    fn small_pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(select(&["a", "b", "*", "**"][..]), 1..6)
            .prop_map(|segments| segments.join("/"))
    }

    fn small_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(select(&["a", "b", "c", ""][..]), 1..9)
            .prop_map(|segments| segments.join("/"))
    }

    #[test]
    fn adversarial_paths_finish_with_the_right_answer() {
        let many_a = vec!["a"; 30_000].join("/");
        let cases = [
            ("**/a/**/b", format!("{many_a}/c"), false),
            ("**/a/**/b", format!("{many_a}/b"), true),
            ("**/a/**/a/**/a/**/b", format!("{many_a}/c"), false),
            ("**/**/**/**/c", format!("{many_a}/c"), true),
            ("a/**/*/**/a/c", format!("{many_a}/c"), true),
            ("**/b/**", many_a.clone(), false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(p(pattern).matches(&path), expected, "{pattern}");
        }
    }

    #[test]
    fn patterns_longer_than_one_bitset_word() {
        for len in [62, 63, 64, 65, 127, 128, 200] {
            let literals: Vec<String> = (0..len).map(|i| format!("s{i}")).collect();
            let exact = literals.join("/");
            assert!(p(&exact).matches(&exact), "{len} literals");
            assert!(!p(&exact).matches(&format!("{exact}/more")));
            let mut wild = literals.clone();
            wild[len / 2] = "*".into();
            wild.push("**".into());
            let wild = p(&wild.join("/"));
            assert!(wild.matches(&exact));
            assert!(wild.matches(&format!("{exact}/x/y")));
            assert!(!wild.matches(&literals[..len - 1].join("/")));
        }
    }

    #[test]
    fn containment_cases() {
        for pattern in ["x", "x/*", "x/**", "**", "*/x/**/y", "**/**"] {
            assert!(
                p(pattern).contains(&p(pattern)),
                "{pattern} contains itself"
            );
            assert!(p("**").contains(&p(pattern)), "** contains {pattern}");
        }
        assert!(p("x/**").contains(&p("x/y/*")));
        assert!(p("x/**").contains(&p("x/a/**")));
        assert!(p("x/**").contains(&p("x")), "** may match nothing");
        assert!(p("x/*").contains(&p("x/y")));
        assert!(p("**/z").contains(&p("a/**/z")));
        assert!(!p("x/**").contains(&p("**")));
        assert!(!p("x/**").contains(&p("y/**")));
        assert!(!p("x/*").contains(&p("x/**")));
        assert!(!p("x/*").contains(&p("x/y/z")));
        assert!(!p("x/y").contains(&p("x/*")));
        // The documented shortfall: true, but not recognised.
        assert!(!p("*/**").contains(&p("**/*")));
        assert!(!p("*/**").contains(&p("**")));
    }

    #[test]
    fn containment_is_exact_on_small_patterns_without_mixed_runs() {
        let patterns = all_patterns(&["a", "b", "*", "**"], 4);
        let paths = all_paths(&["a", "b", "c"], 6);
        // One bit per path, so comparing two patterns is a few words.
        let matched: Vec<Vec<u64>> = patterns
            .iter()
            .map(|pattern| {
                let mut bits = vec![0u64; paths.len().div_ceil(WORD_BITS)];
                for (index, path) in paths.iter().enumerate() {
                    if pattern.matches(path) {
                        set(&mut bits, index);
                    }
                }
                bits
            })
            .collect();
        for (outer, outer_matched) in patterns.iter().zip(&matched) {
            for (inner, inner_matched) in patterns.iter().zip(&matched) {
                let on_these_paths = inner_matched
                    .iter()
                    .zip(outer_matched)
                    .all(|(by_inner, by_outer)| by_inner & !by_outer == 0);
                let claimed = outer.contains(inner);
                if claimed {
                    assert!(on_these_paths, "{outer} does not contain {inner}");
                } else if !has_mixed_run(outer) {
                    assert!(!on_these_paths, "{outer} contains {inner}, unrecognised");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(pattern in small_pattern(), path in small_path()) {
            let pattern = p(&pattern);
            prop_assert_eq!(pattern.matches(&path), reference_matches(&pattern, &path));
        }

        #[test]
        fn long_patterns_agree_with_reference(
            before in proptest::collection::vec(select(&["a", "*"][..]), 30..40),
            after in proptest::collection::vec(select(&["a", "*"][..]), 30..40),
            path in proptest::collection::vec(select(&["a", "b"][..]), 55..85),
        ) {
            let pattern = p(&format!("{}/**/{}", before.join("/"), after.join("/")));
            let path = path.join("/");
            prop_assert_eq!(pattern.matches(&path), reference_matches(&pattern, &path));
        }

        #[test]
        fn containment_is_sound(outer in small_pattern(), inner in small_pattern()) {
            let (outer, inner) = (p(&outer), p(&inner));
            if outer.contains(&inner) {
                for path in all_paths(&["a", "b", "c"], 5) {
                    prop_assert!(
                        outer.matches(&path) || !inner.matches(&path),
                        "{} contains {} but not {}", outer, inner, path
                    );
                }
            }
        }

        #[test]
        fn a_pattern_contains_itself_and_is_contained_by_double_star(
            pattern in small_pattern(),
        ) {
            let pattern = p(&pattern);
            prop_assert!(pattern.contains(&pattern));
            prop_assert!(p("**").contains(&pattern));
        }

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
