//! Connection URLs without their secrets, for `Debug`, error messages and logs.

use std::fmt;

/// What replaces a secret.
const HIDDEN: &str = "***";

/// A Redis connection URL whose `Debug` and `Display` never show a password.
///
/// The plain URL is only handed to the Redis client; every other use goes through [`redact`].
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretUrl {
    plain: String,
    redacted: String,
}

impl SecretUrl {
    pub(crate) fn new(plain: String) -> Self {
        let redacted = redact(&plain);
        SecretUrl { plain, redacted }
    }

    /// The URL with its password: for the Redis client only.
    pub(crate) fn expose(&self) -> &str {
        &self.plain
    }

    /// The URL safe to show.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `url` with every secret replaced by `***`.
///
/// Errs on the side of hiding: everything before the last `@` counts as user information, of
/// which only a user name followed by `:` stays visible (a lone `secret@` may be a password: some
/// tools read it that way); the values of `pass` and `password` query parameters (redis-rs reads
/// `unix://` credentials from there) are hidden too. A string without `://` is not shown at all.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL; not shown as it may hold a password>".to_owned();
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => {
                    out.push_str(user);
                    out.push(':');
                }
                _ => {}
            }
            out.push_str(HIDDEN);
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (rest, None),
    };
    match before_fragment.split_once('?') {
        Some((location, query)) => {
            out.push_str(location);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((key, _)) if is_secret_param(key) => {
                        out.push_str(key);
                        out.push('=');
                        out.push_str(HIDDEN);
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://localhost/2", "redis://localhost/2"),
            ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://alice:s3cret@host", "redis://alice:***@host"),
            ("rediss://alice:s3cret@host:6380#insecure", "rediss://alice:***@host:6380#insecure"),
            ("rediss://:s3cret@host:6380/0", "rediss://:***@host:6380/0"),
            (
                "rediss://default:s3cret@127.0.0.1:6380/#insecure",
                "rediss://default:***@127.0.0.1:6380/#insecure",
            ),
            ("valkeys://:s3cret@host", "valkeys://:***@host"),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://:p@ss:w@rd@host", "redis://:***@host"),
            ("redis://:pa/ss?x@host", "redis://:***@host"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("unix:///run/redis.sock?db=1&pass=s3cret", "unix:///run/redis.sock?db=1&pass=***"),
            (
                "redis+unix:///r.sock?user=bob&PASSWORD=s3cret&db=2",
                "redis+unix:///r.sock?user=bob&PASSWORD=***&db=2",
            ),
            ("not a url s3cret", "<not a URL; not shown as it may hold a password>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("s3cret"), "{url}");
        }
    }

    #[test]
    fn secret_url_debug_and_display_are_redacted() {
        let url = SecretUrl::new("redis://:s3cret@host".into());
        assert_eq!(format!("{url:?}"), "\"redis://:***@host\"");
        assert_eq!(url.to_string(), "redis://:***@host");
        assert_eq!(url.expose(), "redis://:s3cret@host");
    }
}
