//! Rate-limited warnings: a peer that sends a million bad frames must not write a million
//! log lines (a Resolve flood once grew one node's log by 1.16 M lines in four seconds).
//! Each kind of warning may be logged [`WARNINGS_PER_WINDOW_MAX`] times per
//! [`WARNING_WINDOW`]; the rest are counted, and the next window's first line says how many
//! were suppressed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Lines of one kind logged per window at most.
pub const WARNINGS_PER_WINDOW_MAX: u32 = 10;

/// The window.
pub const WARNING_WINDOW: Duration = Duration::from_secs(10);

/// Kinds of warnings tracked at most (kinds are a fixed set of static strings; this is a
/// bound, not a budget).
pub const WARNING_KINDS_MAX: usize = 256;

/// Per-kind counters.
#[derive(Debug, Default)]
pub struct WarningLimiter {
    kinds: BTreeMap<&'static str, KindWindow>,
}

#[derive(Debug, Clone, Copy)]
struct KindWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Whether to log a warning now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines of this kind were dropped since the last one logged.
    Log {
        /// Lines dropped before this one.
        suppressed: u64,
    },
    /// Drop it (counted).
    Suppress,
}

impl WarningLimiter {
    /// Decides whether a warning of `kind` may be logged at `now`.
    pub fn check(&mut self, kind: &'static str, now: Instant) -> Verdict {
        if self.kinds.len() >= WARNING_KINDS_MAX && !self.kinds.contains_key(kind) {
            return Verdict::Suppress;
        }
        let window = self.kinds.entry(kind).or_insert(KindWindow {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.started) >= WARNING_WINDOW {
            window.started = now;
            window.logged = 0;
        }
        if window.logged >= WARNINGS_PER_WINDOW_MAX {
            window.suppressed = window.suppressed.saturating_add(1);
            return Verdict::Suppress;
        }
        window.logged += 1;
        let suppressed = std::mem::take(&mut window.suppressed);
        Verdict::Log { suppressed }
    }
}

/// Logs a `tracing::warn!` through a [`WarningLimiter`]: `warn_limited!(limiter, "kind",
/// field = value, ...; "message")`.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $kind:expr, $($fields:tt)*) => {
        if let $crate::ratelog::Verdict::Log { suppressed } =
            $limiter.check($kind, std::time::Instant::now())
        {
            tracing::warn!(kind = $kind, suppressed, $($fields)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_kind_logs_a_few_lines_per_window_and_counts_the_rest() {
        let mut limiter = WarningLimiter::default();
        let start = Instant::now();
        let logged = (0..1_000)
            .filter(|_| matches!(limiter.check("flood", start), Verdict::Log { .. }))
            .count();
        assert_eq!(logged, WARNINGS_PER_WINDOW_MAX as usize);
        assert!(
            matches!(
                limiter.check("other", start),
                Verdict::Log { suppressed: 0 }
            ),
            "other kinds are not affected"
        );
        assert_eq!(
            limiter.check("flood", start + WARNING_WINDOW),
            Verdict::Log {
                suppressed: 1_000 - u64::from(WARNINGS_PER_WINDOW_MAX)
            },
            "the next window says how many were dropped"
        );
    }
}
