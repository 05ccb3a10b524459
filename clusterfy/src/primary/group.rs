//! Worker groups as sans-IO state: a group is a name prefix with the options its workers are
//! forked with, and its members are the workers named `<group>-<n>` (n from 1), so a member keeps
//! its group through revivals and replacements (they keep the name) with nothing to update.

use std::collections::BTreeMap;

use clusterfy_core::{Error, ErrorKind, Result};

use super::options::WorkerOptions;

/// The registered groups, by name.
#[derive(Default)]
pub(crate) struct Groups {
    options: BTreeMap<String, WorkerOptions>,
}

impl Groups {
    /// Registers group `name`, whose new members are forked with `options`.
    pub(crate) fn register(&mut self, name: &str, options: WorkerOptions) -> Result<()> {
        check_name(name)?;
        if self.options.contains_key(name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a group named {name:?} exists already; scale it instead (Primary::scale)"),
            ));
        }
        self.options.insert(name.to_owned(), options);
        Ok(())
    }

    /// The options of group `name`, or an error naming the groups there are.
    pub(crate) fn options(&self, name: &str) -> Result<&WorkerOptions> {
        self.options.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.options.keys().map(String::as_str).collect();
            Error::new(
                ErrorKind::UnknownWorker,
                format!(
                    "no group named {:?}; the groups are [{}] (Primary::fork_group makes one)",
                    clusterfy_core::error::excerpt(name),
                    known.join(", ")
                ),
            )
            .with_context("group", name)
        })
    }

    /// Every group's name, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.options.keys().map(String::as_str)
    }

    /// The group worker `name` belongs to, if any.
    pub(crate) fn group_of(&self, name: &str) -> Option<&str> {
        self.names().find(|group| member_index(group, name).is_some())
    }
}

/// The number `n` of worker `name` in group `group` (`<group>-<n>`, n from 1).
pub(crate) fn member_index(group: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(group)?.strip_prefix('-')?;
    // "http-01" is not member 1: each member has one name.
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name of member `n` of group `group`.
pub(crate) fn member_name(group: &str, n: u32) -> String {
    format!("{group}-{n}")
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{:?} cannot name a group: use a non-empty name without spaces (members are named \
                 <group>-1, <group>-2, ...)",
                clusterfy_core::error::excerpt(name)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_named_group_dash_number_from_one() {
        assert_eq!(member_index("http", "http-1"), Some(1));
        assert_eq!(member_index("http", "http-12"), Some(12));
        for not_a_member in ["http", "http-", "http-0", "http-01", "http-x", "http-1-2", "https-1", "api-1"] {
            assert_eq!(member_index("http", not_a_member), None, "{not_a_member}");
        }
        assert_eq!(member_index("http-1", "http-1-2"), Some(2), "a group name may end in a number");
        assert_eq!(member_name("http", 3), "http-3");
    }

    #[test]
    fn an_unknown_group_is_an_error_naming_the_groups_and_names_are_unique() {
        let mut groups = Groups::default();
        groups.register("http", WorkerOptions::default()).expect("registered");
        groups.register("jobs", WorkerOptions::default()).expect("registered");
        let again = groups.register("http", WorkerOptions::default()).expect_err("twice");
        assert_eq!(again.kind(), ErrorKind::AlreadyExists);
        let unknown = groups.options("htp").expect_err("unknown");
        assert_eq!(unknown.kind(), ErrorKind::UnknownWorker);
        assert!(unknown.message().contains("[http, jobs]"), "{unknown}");
        assert_eq!(groups.group_of("jobs-2"), Some("jobs"));
        assert_eq!(groups.group_of("other"), None);
        assert_eq!(
            groups.register("", WorkerOptions::default()).expect_err("empty").kind(),
            ErrorKind::InvalidInput
        );
    }
}
