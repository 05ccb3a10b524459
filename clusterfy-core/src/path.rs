//! Dotted storage paths such as `"test.something"`.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// Longest accepted segment, in bytes. Keeps keys of every backend (Redis, sled) reasonable.
pub const MAX_SEGMENT_LEN: usize = 256;
/// Deepest accepted nesting.
pub const MAX_DEPTH: usize = 64;

/// A validated dotted path into the shared storage.
///
/// `"a.b.c"` addresses key `c` of map `b` of map `a`. The empty string is the root (the whole
/// storage). Segments are non-empty, contain neither `.` nor NUL, are at most
/// [`MAX_SEGMENT_LEN`] bytes, and a path has at most [`MAX_DEPTH`] segments.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path {
    dotted: String,
}

impl Path {
    /// The root of the storage: the whole tree.
    pub fn root() -> Path {
        Path { dotted: String::new() }
    }

    /// Parses and validates a dotted path.
    pub fn parse(dotted: &str) -> Result<Path> {
        if dotted.is_empty() {
            return Ok(Path::root());
        }
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::InvalidPath,
                format!("{why}; write paths as dot-separated keys like \"test.some\""),
            )
            .with_context("path", format!("{dotted:?}"))
        };
        let mut depth = 0;
        for segment in dotted.split('.') {
            depth += 1;
            if segment.is_empty() {
                return Err(invalid("a path segment is empty (leading, trailing or doubled dot)"));
            }
            if segment.len() > MAX_SEGMENT_LEN {
                return Err(invalid(&format!("a path segment is longer than {MAX_SEGMENT_LEN} bytes")));
            }
            if segment.contains('\0') {
                return Err(invalid("a path segment contains a NUL character"));
            }
        }
        if depth > MAX_DEPTH {
            return Err(invalid(&format!("the path is deeper than {MAX_DEPTH} segments")));
        }
        Ok(Path { dotted: dotted.to_owned() })
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
    fn starts_with_respects_segment_boundaries() {
        let ab = Path::parse("a.b").unwrap();
        assert!(Path::parse("a.b.c").unwrap().starts_with(&ab));
        assert!(ab.starts_with(&ab));
        assert!(!Path::parse("a.bc").unwrap().starts_with(&ab));
        assert!(ab.starts_with(&Path::root()));
    }
}
