//! Checkpoint compaction: rewrite a log prefix into the fewest records that replay to the
//! same node state.
//!
//! `Node::recover` replays records in order. Compaction keeps that replay's result while
//! dropping what a later record supersedes:
//! * acceptor records and Aborted votes of transactions whose outcome is in the log (the
//!   `Outcome` record replaces acceptor state at replay);
//! * all but the last acceptor record per (transaction, instance) of undecided ones;
//! * all but the highest `LeaderRound`;
//! * outcome records older than the node's outcome window, unless this node applied them
//!   as a committed participant (see below).
//!
//! Committed writes live only in `Vote` + `Outcome::Commit` pairs, and every applied commit
//! advances the owner's commit sequence (the version clients validate against). So every
//! committed pair stays, in order; only its writes that a later commit overwrites are
//! trimmed, together with its locks, read versions and the descriptor's acceptor list. A
//! reused version could make a stale validating read pass, so versions must be preserved
//! exactly; folding all committed rows into one snapshot record needs a protocol record
//! that restores rows with their versions (requested from the protocol crate).

use dtx_protocol::{Outcome, Record, TxnId, Vote};
use std::collections::{BTreeMap, BTreeSet};

/// What pass one learned about the prefix.
#[derive(Default)]
struct Survey {
    /// Outcome and the position of the first Outcome record, per transaction.
    outcomes: BTreeMap<TxnId, (Outcome, usize)>,
    /// Committed transactions this node applied (a Prepared vote before a Commit outcome).
    applied: BTreeSet<TxnId>,
    /// The last applied commit writing each key.
    last_writer: BTreeMap<dtx_protocol::Key, TxnId>,
    /// Position of the last acceptor record per (transaction, instance).
    last_acceptor: BTreeMap<(TxnId, dtx_protocol::NodeId), usize>,
    /// Positions of Outcome records that are kept regardless of the window.
    outcome_positions: Vec<usize>,
    /// Highest leader round.
    leader_round: Option<u32>,
}

/// Rewrites `records` (a log prefix, in order) into an equivalent shorter list; see the
/// module docs. `outcomes_window` must be at least the node's `Limits::outcomes_kept_max`.
pub fn compact(records: Vec<Record>, outcomes_window: usize) -> Vec<Record> {
    let survey = survey(&records);
    let window_start = survey
        .outcome_positions
        .len()
        .saturating_sub(outcomes_window);
    let recent_outcomes: BTreeSet<usize> = survey.outcome_positions[window_start..]
        .iter()
        .copied()
        .collect();
    let mut out = Vec::new();
    if let Some(round) = survey.leader_round {
        out.push(Record::LeaderRound { round });
    }
    for (position, record) in records.into_iter().enumerate() {
        if let Some(kept) = keep(&survey, &recent_outcomes, position, record) {
            out.push(kept);
        }
    }
    out
}

fn survey(records: &[Record]) -> Survey {
    let mut survey = Survey::default();
    let mut prepared: BTreeSet<TxnId> = BTreeSet::new();
    for (position, record) in records.iter().enumerate() {
        match record {
            Record::Vote {
                descriptor, vote, ..
            } if *vote == Vote::Prepared && !survey.outcomes.contains_key(&descriptor.txn) => {
                prepared.insert(descriptor.txn);
            }
            Record::Acceptor { descriptor, rm, .. } => {
                survey.last_acceptor.insert((descriptor.txn, *rm), position);
            }
            Record::LeaderRound { round } => {
                survey.leader_round = Some(survey.leader_round.unwrap_or(0).max(*round));
            }
            Record::Outcome { txn, outcome } => {
                if survey.outcomes.contains_key(txn) {
                    continue;
                }
                survey.outcomes.insert(*txn, (*outcome, position));
                survey.outcome_positions.push(position);
                if *outcome == Outcome::Commit && prepared.contains(txn) {
                    survey.applied.insert(*txn);
                }
            }
            // A record kind this compactor does not know is kept as it is (see `keep`).
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    // Last writers, in commit (Outcome record) order.
    let mut commits: Vec<(usize, TxnId)> = survey
        .applied
        .iter()
        .filter_map(|txn| {
            survey
                .outcomes
                .get(txn)
                .map(|(_, position)| (*position, *txn))
        })
        .collect();
    commits.sort();
    let mut writes_of: BTreeMap<TxnId, Vec<dtx_protocol::Key>> = BTreeMap::new();
    for record in records {
        if let Record::Vote {
            descriptor, writes, ..
        } = record
        {
            if survey.applied.contains(&descriptor.txn) {
                writes_of
                    .entry(descriptor.txn)
                    .or_insert_with(|| writes.iter().map(|(key, _)| key.clone()).collect());
            }
        }
    }
    for (_, txn) in commits {
        for key in writes_of.remove(&txn).unwrap_or_default() {
            survey.last_writer.insert(key, txn);
        }
    }
    survey
}

fn keep(
    survey: &Survey,
    recent_outcomes: &BTreeSet<usize>,
    position: usize,
    record: Record,
) -> Option<Record> {
    match record {
        Record::LeaderRound { .. } => None,
        Record::Vote { ref descriptor, .. } => {
            let txn = descriptor.txn;
            match survey.outcomes.get(&txn) {
                // Undecided: kept whole (locks re-acquired at restart, descriptor for
                // recovery, reason for the client).
                None => Some(record),
                // A vote after its outcome is skipped by replay.
                Some((_, outcome_position)) if *outcome_position < position => None,
                Some(_) if survey.applied.contains(&txn) => Some(trim_applied(record, survey)),
                Some(_) => None,
            }
        }
        Record::Acceptor {
            ref descriptor, rm, ..
        } => {
            let undecided = !survey.outcomes.contains_key(&descriptor.txn);
            let last = survey.last_acceptor.get(&(descriptor.txn, rm)) == Some(&position);
            (undecided && last).then_some(record)
        }
        Record::Outcome { txn, .. } => {
            let first = survey.outcomes.get(&txn).map(|(_, at)| *at) == Some(position);
            let needed = survey.applied.contains(&txn) || recent_outcomes.contains(&position);
            (first && needed).then_some(record)
        }
        // Unknown kinds (added to the protocol later) are never dropped: keeping a record
        // is always safe, dropping one is not.
        #[allow(unreachable_patterns)]
        _ => Some(record),
    }
}

/// An applied commit's vote, reduced to what replay reads: the txn id and the writes no
/// later commit overwrites.
fn trim_applied(record: Record, survey: &Survey) -> Record {
    let Record::Vote {
        mut descriptor,
        vote,
        writes,
        ..
    } = record
    else {
        return record;
    };
    let txn = descriptor.txn;
    let writes = writes
        .into_iter()
        .filter(|(key, _)| survey.last_writer.get(key) == Some(&txn))
        .collect();
    descriptor.acceptors.clear();
    descriptor.participants.clear();
    Record::Vote {
        descriptor,
        vote,
        reason: None,
        writes,
        locks: Vec::new(),
        read_versions: Vec::new(),
    }
}
