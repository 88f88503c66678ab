//! Deliberately broken protocol variants, for proving that checkers can fail.
//!
//! The switches exist in every build, but [`Bugs::has`] is constant `false` unless the crate
//! is built with the `bugs` feature, so production code compiles the broken paths away.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// True when this build can switch bugs on (`--features bugs`).
pub const BUGS_AVAILABLE: bool = cfg!(feature = "bugs");

/// A deliberate protocol bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bug {
    /// Acceptors send Phase1b/Phase2b without persisting their state first: after a crash
    /// they forget promises and accepted values, so two values can be chosen.
    AcceptorSkipsPersist,
    /// A recovery leader proposes Aborted whatever the Phase1b reports say: an instance
    /// that chose Prepared can then choose Aborted too.
    RecoveryIgnoresAccepted,
    /// An RM commits as soon as its own instance chose Prepared, without waiting for the
    /// others: atomicity breaks whenever another RM votes Aborted.
    RmCommitsOnOwnVote,
    /// RMs release every lock at prepare (interactive transactions) and read-only
    /// one-shot participants release their shared locks at prepare: serializability breaks.
    ReleaseLocksAtPrepare,
    /// No deadlock detection at all: deadlocks end only by the lock-wait timeout.
    NoDeadlockDetection,
    /// An RM with an external resource votes Prepared as soon as it asks the resource to
    /// prepare, without waiting for its answer: a refusing or crashed service leaves a
    /// committed transaction with nothing behind it at that service.
    VoteBeforeResource,
    /// A one-phase RM asked for the outcome of a transaction it never prepared answers
    /// Aborted without recording it: a late or duplicated prepare then commits a
    /// transaction the client was told aborted.
    OnePhaseUnrecordedAbort,
    /// A one-phase RM tells its client the decision before the write that holds it is
    /// durable: a crash then loses a commit the client was told about.
    OnePhaseAnswersBeforeDurable,
}

impl Bug {
    /// Every bug, for listing and for tests.
    pub const ALL: [Bug; 8] = [
        Bug::AcceptorSkipsPersist,
        Bug::RecoveryIgnoresAccepted,
        Bug::RmCommitsOnOwnVote,
        Bug::ReleaseLocksAtPrepare,
        Bug::NoDeadlockDetection,
        Bug::VoteBeforeResource,
        Bug::OnePhaseUnrecordedAbort,
        Bug::OnePhaseAnswersBeforeDurable,
    ];

    /// The bug's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AcceptorSkipsPersist => "acceptor-skips-persist",
            Bug::RecoveryIgnoresAccepted => "recovery-ignores-accepted",
            Bug::RmCommitsOnOwnVote => "rm-commits-on-own-vote",
            Bug::ReleaseLocksAtPrepare => "release-locks-at-prepare",
            Bug::NoDeadlockDetection => "no-deadlock-detection",
            Bug::VoteBeforeResource => "vote-before-resource",
            Bug::OnePhaseUnrecordedAbort => "one-phase-unrecorded-abort",
            Bug::OnePhaseAnswersBeforeDurable => "one-phase-answers-before-durable",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

/// The set of bugs switched on for a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bugs(BTreeSet<Bug>);

impl Bugs {
    /// No bugs: the correct protocol.
    pub fn none() -> Bugs {
        Bugs::default()
    }

    /// Switches `bug` on (has effect only in a `bugs` build).
    pub fn with(mut self, bug: Bug) -> Bugs {
        self.0.insert(bug);
        self
    }

    /// True if `bug` is on in this build.
    #[inline]
    pub fn has(&self, bug: Bug) -> bool {
        BUGS_AVAILABLE && self.0.contains(&bug)
    }
}
