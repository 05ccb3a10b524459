//! When to revive a crashed worker: exponential backoff and an intensity limit, as OTP
//! supervisors do (at most `max_restarts` within `window`, then give up).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a worker with revival is restarted after a crash (non-zero exit code or a signal).
///
/// Build one with [`RestartPolicy::new`] (or start from the default and set its fields): the
/// struct may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Most restarts allowed within [`RestartPolicy::window`]; one more crash gives up.
    pub max_restarts: u32,
    /// The sliding window for [`RestartPolicy::max_restarts`].
    pub window: Duration,
    /// Delay before the first restart after a stable run.
    pub initial_backoff: Duration,
    /// Longest delay between restarts; the delay doubles per crash in a row up to this.
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    /// 5 restarts within 60 s; backoff from 50 ms doubling up to 5 s.
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// At most `max_restarts` restarts within `window`, with the default backoff.
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        RestartPolicy { max_restarts, window, ..RestartPolicy::default() }
    }

    /// The delay before the first restart after a stable run, doubling per crash in a row up to
    /// `max`.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartDecision {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// Too many restarts in the window: stop reviving.
    GiveUp,
}

/// The recent restarts of one worker, whatever caused them (a crash, the memory limit), kept
/// with its record and handed on to a replacement, so that neither a reload nor a replacement
/// resets the intensity limit (sans-IO: the caller passes the clock).
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartHistory {
    recent: VecDeque<Instant>,
}

impl RestartHistory {
    /// Records the need for a restart at `now` and decides under `policy`.
    pub(crate) fn on_restart_needed(&mut self, policy: &RestartPolicy, now: Instant) -> RestartDecision {
        while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) > policy.window) {
            self.recent.pop_front();
        }
        let in_window = self.recent.len() as u32;
        if in_window >= policy.max_restarts {
            return RestartDecision::GiveUp;
        }
        self.recent.push_back(now);
        let doubling = 2u32.saturating_pow(in_window.min(16));
        let delay = policy.initial_backoff.saturating_mul(doubling).min(policy.max_backoff);
        RestartDecision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let mut history = RestartHistory::default();
        let t = Instant::now();
        let policy = policy();
        assert_eq!(
            history.on_restart_needed(&policy, t),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            history.on_restart_needed(&policy, t),
            RestartDecision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            history.on_restart_needed(&policy, t),
            RestartDecision::RestartAfter(Duration::from_millis(300))
        );
        assert_eq!(history.on_restart_needed(&policy, t), RestartDecision::GiveUp);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut history = RestartHistory::default();
        let t = Instant::now();
        let policy = policy();
        for _ in 0..3 {
            assert!(matches!(history.on_restart_needed(&policy, t), RestartDecision::RestartAfter(_)));
        }
        let later = t + Duration::from_secs(11);
        assert_eq!(
            history.on_restart_needed(&policy, later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn a_copied_history_keeps_counting_for_the_replacement() {
        let mut history = RestartHistory::default();
        let t = Instant::now();
        let policy = policy();
        history.on_restart_needed(&policy, t);
        history.on_restart_needed(&policy, t);
        let mut handed_on = history.clone();
        handed_on.on_restart_needed(&policy, t);
        assert_eq!(handed_on.on_restart_needed(&policy, t), RestartDecision::GiveUp, "the limit counts on");
    }
}
