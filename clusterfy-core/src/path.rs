//! Dotted storage paths such as `"test.something"`.

use std::fmt;

use crate::error::{Error, ErrorKind, Result, excerpt};

/// Longest accepted segment, in bytes of UTF-8 (not characters). Keeps keys of every backend
/// (Redis, sled) reasonable.
pub const MAX_SEGMENT_LEN: usize = 256;
/// Deepest accepted nesting: the most segments a path has.
pub const MAX_DEPTH: usize = 64;

/// A validated dotted path into the shared storage.
///
/// `"a.b.c"` addresses key `c` of map `b` of map `a`. The empty string is the root (the whole
/// storage).
///
/// # Limits
///
/// [`Path::parse`] refuses, with [`ErrorKind::InvalidPath`] and a message that names the
/// offending segment, a path that breaks one of these rules:
///
/// - **Segments are not empty**: no leading, trailing or doubled `.` (`"a..b"`, `".a"`).
/// - **Segments are at most [`Path::MAX_SEGMENT_LEN`] (256) bytes** of UTF-8; a character
///   outside ASCII takes two to four of them.
/// - **At most [`Path::MAX_DEPTH`] (64) segments.**
/// - **Allowed characters: every Unicode character except `.` (the separator) and NUL** (`\0`,
///   which backends use to end a segment). Spaces, other punctuation and non-ASCII letters are
///   fine inside a segment: `"users.Zoë Smith.last seen"` is a valid path.
/// - **No whitespace at the start or end of a segment**: `"x. a"` (segment `" a"`) and `"a .b"`
///   are refused. Such a space is easily typed by mistake and invisible when the path is printed,
///   and `"x. a"` would silently address another entry than `"x.a"`.
///
/// The keys of a map saved into the storage become segments, so they follow the same rules.
///
/// ```
/// use clusterfy_core::{ErrorKind, Path};
///
/// assert_eq!(Path::parse("users.Zoë Smith").unwrap().segments().count(), 2);
/// let err = Path::parse("x. a").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidPath);
/// assert!(err.message().contains(r#"the segment " a" of "x. a" starts with a space"#), "{err}");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path {
    dotted: String,
}

/// What is wrong with one segment, for the messages of [`Path::parse`] and the storage.
fn segment_problem(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return Some("is empty".to_owned());
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Some(format!("is {} bytes long, more than the {MAX_SEGMENT_LEN} allowed", segment.len()));
    }
    if segment.contains('\0') {
        return Some("contains a NUL character".to_owned());
    }
    let describe = |c: char| if c == ' ' { "a space".to_owned() } else { format!("whitespace ({c:?})") };
    const RULE: &str = "segments must not start or end with whitespace";
    if let Some(c) = segment.chars().next().filter(|c| c.is_whitespace()) {
        return Some(format!("starts with {} ({RULE})", describe(c)));
    }
    if let Some(c) = segment.chars().next_back().filter(|c| c.is_whitespace()) {
        return Some(format!("ends with {} ({RULE})", describe(c)));
    }
    None
}

impl Path {
    /// The longest segment, in bytes of UTF-8 ([`MAX_SEGMENT_LEN`]).
    pub const MAX_SEGMENT_LEN: usize = MAX_SEGMENT_LEN;
    /// The most segments a path has ([`MAX_DEPTH`]).
    pub const MAX_DEPTH: usize = MAX_DEPTH;

    /// The root of the storage: the whole tree.
    pub fn root() -> Path {
        Path { dotted: String::new() }
    }

    /// Parses and validates a dotted path; see [the limits](Path#limits).
    ///
    /// Fails with [`ErrorKind::InvalidPath`], whose message names the offending segment and why
    /// it is refused, and whose `path` context is the path as given (quoted, and cut after about
    /// a hundred bytes, like every input an error shows).
    pub fn parse(dotted: &str) -> Result<Path> {
        Self::validate(dotted)?;
        Ok(Path { dotted: dotted.to_owned() })
    }

    /// [`Path::parse`] of a string the caller owns, which the path keeps (no copy).
    pub fn parse_owned(dotted: String) -> Result<Path> {
        Self::validate(&dotted)?;
        Ok(Path { dotted })
    }

    fn validate(dotted: &str) -> Result<()> {
        if Self::plainly_valid(dotted) { Ok(()) } else { Self::validate_fully(dotted) }
    }

    /// Every rule, with a message that names what is wrong.
    fn validate_fully(dotted: &str) -> Result<()> {
        if dotted.is_empty() {
            return Ok(());
        }
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::InvalidPath,
                format!("{why}; write paths as dot-separated keys like \"test.some\""),
            )
            .with_context("path", format!("{:?}", excerpt(dotted)))
        };
        let mut depth = 0;
        for segment in dotted.split('.') {
            depth += 1;
            if segment.is_empty() {
                return Err(invalid(&format!(
                    "a segment of {:?} is empty (a leading, trailing or doubled dot)",
                    excerpt(dotted)
                )));
            }
            if let Some(problem) = segment_problem(segment) {
                return Err(invalid(&format!(
                    "the segment {:?} of {:?} {problem}",
                    excerpt(segment),
                    excerpt(dotted)
                )));
            }
        }
        if depth > MAX_DEPTH {
            return Err(invalid(&format!(
                "the path {:?} has {depth} segments, more than the {MAX_DEPTH} allowed",
                excerpt(dotted)
            )));
        }
        Ok(())
    }

    /// The common case in one pass over the bytes: printable ASCII other than space (so no NUL and
    /// no whitespace to start or end a segment), no empty segment, none too long, not too deep.
    /// Anything else takes the full check, which also says what is wrong.
    fn plainly_valid(dotted: &str) -> bool {
        let (mut depth, mut segment_len) = (1, 0);
        for &byte in dotted.as_bytes() {
            match byte {
                b'.' if segment_len == 0 => return false,
                b'.' => {
                    depth += 1;
                    segment_len = 0;
                }
                b'!'..=b'~' if segment_len < MAX_SEGMENT_LEN => segment_len += 1,
                _ => return false,
            }
        }
        segment_len > 0 && depth <= MAX_DEPTH
    }

    /// Whether `segment` may be one segment of a path (by [the limits](Path#limits)): for the
    /// keys of a map about to be saved, which become segments.
    pub fn is_valid_segment(segment: &str) -> bool {
        !segment.contains('.') && segment_problem(segment).is_none()
    }

    /// True for the root path.
    pub fn is_root(&self) -> bool {
        self.dotted.is_empty()
    }

    /// The segments, outermost first; none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.dotted.split('.').filter(|s| !s.is_empty())
    }

    /// The enclosing path; `None` for the root.
    pub fn parent(&self) -> Option<Path> {
        if self.is_root() {
            return None;
        }
        Some(match self.dotted.rfind('.') {
            Some(i) => Path { dotted: self.dotted[..i].to_owned() },
            None => Path::root(),
        })
    }

    /// The last segment; `None` for the root.
    pub fn last(&self) -> Option<&str> {
        self.segments().last()
    }

    /// This path with one more segment. The segment must itself be valid.
    pub fn child(&self, segment: &str) -> Result<Path> {
        if self.is_root() { Path::parse(segment) } else { Path::parse(&format!("{}.{segment}", self.dotted)) }
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &Path) -> bool {
        other.is_root()
            || self.dotted == other.dotted
            || (self.dotted.starts_with(&other.dotted)
                && self.dotted.as_bytes().get(other.dotted.len()) == Some(&b'.'))
    }

    /// The dotted form; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.dotted
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() { f.write_str("<root>") } else { f.write_str(&self.dotted) }
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({:?})", self.dotted)
    }
}

impl std::str::FromStr for Path {
    type Err = Error;
    fn from_str(s: &str) -> Result<Path> {
        Path::parse(s)
    }
}

impl TryFrom<&str> for Path {
    type Error = Error;
    fn try_from(s: &str) -> Result<Path> {
        Path::parse(s)
    }
}

impl TryFrom<String> for Path {
    type Error = Error;
    fn try_from(s: String) -> Result<Path> {
        Path::parse(&s)
    }
}

impl TryFrom<&String> for Path {
    type Error = Error;
    fn try_from(s: &String) -> Result<Path> {
        Path::parse(s)
    }
}

impl TryFrom<&Path> for Path {
    type Error = Error;
    fn try_from(p: &Path) -> Result<Path> {
        Ok(p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_quick_check_accepts_only_what_the_full_check_accepts(dotted in "[a. \t\u{0}é~!]{0,12}") {
            if Path::plainly_valid(&dotted) {
                proptest::prop_assert!(Path::validate_fully(&dotted).is_ok(), "{:?}", dotted);
            }
        }
    }

    #[test]
    fn the_quick_check_takes_the_common_paths() {
        for plain in ["a", "bench.value", "config.limits.max-3", "x:y_z"] {
            assert!(Path::plainly_valid(plain), "{plain}");
        }
        let long = "s".repeat(MAX_SEGMENT_LEN + 1);
        for other in ["", ".a", "a..b", "a.", "with space", "é", long.as_str()] {
            assert!(!Path::plainly_valid(other), "{other:?} goes to the full check");
        }
    }

    #[test]
    fn parses_dotted_paths_and_root() {
        let p = Path::parse("test.some").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["test", "some"]);
        assert_eq!(p.parent().unwrap().as_str(), "test");
        assert!(p.parent().unwrap().parent().unwrap().is_root());
        assert!(Path::parse("").unwrap().is_root());
        assert_eq!(Path::root().segments().count(), 0);
    }

    #[test]
    fn rejects_empty_segments_with_a_clear_error() {
        for bad in [".", "a.", ".a", "a..b", "a\0b"] {
            let err = Path::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidPath, "{bad:?}");
            assert!(err.to_string().contains("path"), "{err}");
        }
        assert!(Path::parse(&"x".repeat(MAX_SEGMENT_LEN + 1)).is_err());
        assert!(Path::parse(&vec!["a"; MAX_DEPTH + 1].join(".")).is_err());
    }

    #[test]
    fn segments_with_leading_or_trailing_whitespace_are_refused_naming_the_segment() {
        let cases = [
            ("x. a", r#"the segment " a" of "x. a" starts with a space"#),
            ("a .b", r#"the segment "a " of "a .b" ends with a space"#),
            (" a", r#"the segment " a" of " a" starts with a space"#),
            ("a.b\t", r#"the segment "b\t" of "a.b\t" ends with whitespace ('\t')"#),
            ("a.\u{a0}b", r#"the segment "\u{a0}b" of "a.\u{a0}b" starts with whitespace ('\u{a0}')"#),
        ];
        for (bad, why) in cases {
            let err = Path::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidPath, "{bad:?}");
            assert!(err.message().starts_with(why), "{bad:?}: {err}");
            assert_eq!(err.context_value("path"), Some(format!("{bad:?}").as_str()));
        }
        // Inside a segment, spaces are fine.
        assert_eq!(Path::parse("users.Zoë Smith.last seen").unwrap().last(), Some("last seen"));
        assert!(Path::is_valid_segment("Zoë Smith") && !Path::is_valid_segment(" a"));
        assert!(
            !Path::is_valid_segment("a.b") && !Path::is_valid_segment("") && !Path::is_valid_segment("\0")
        );
    }

    #[test]
    fn errors_name_the_limit_and_quote_at_most_about_a_hundred_bytes() {
        let long = "x".repeat(MAX_SEGMENT_LEN + 1);
        let err = Path::parse(&format!("a.{long}")).unwrap_err();
        assert!(err.message().contains("is 257 bytes long, more than the 256 allowed"), "{err}");
        let deep = vec!["a"; MAX_DEPTH + 1].join(".");
        let err = Path::parse(&deep).unwrap_err();
        assert!(err.message().contains("has 65 segments, more than the 64 allowed"), "{err}");

        // A megabyte of bad path: the error stays short, and says how long the input was.
        let huge = format!("{}..", "y".repeat(1 << 20));
        let err = Path::parse(&huge).unwrap_err();
        assert!(err.to_string().len() < 600, "{} bytes: {err}", err.to_string().len());
        assert!(err.to_string().contains("… (1048578 bytes)"), "{err}");
        let path = err.context_value("path").unwrap();
        assert!(path.len() < 200 && path.ends_with("… (1048578 bytes)"), "{path}");
    }

    #[test]
    fn starts_with_respects_segment_boundaries() {
        let ab = Path::parse("a.b").unwrap();
        assert!(Path::parse("a.b.c").unwrap().starts_with(&ab));
        assert!(ab.starts_with(&ab));
        assert!(!Path::parse("a.bc").unwrap().starts_with(&ab));
        assert!(ab.starts_with(&Path::root()));
    }
}
