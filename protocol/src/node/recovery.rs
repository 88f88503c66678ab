//! Rebuilding a node from its log: replaying records (never panicking on what the log
//! says), the restart step (fresh leader round, re-acquired locks, deadlines), and the
//! checkpoint that restates a log's replayed state in few records.

use super::outbox::Gates;
use super::{fence, reserved_bytes, Event, Node, NodeConfig, RmPart, TxnEntry};
use crate::cluster::Cluster;
use crate::invariants;
use crate::record::Record;
use crate::reject::ReplayProblem;
use crate::types::{
    NodeId, Outcome, Time, TxnDescriptor, TxnId, Vote, LEADER_ROUND_MAX, ROUND_MAX,
};

impl Node {
    /// Rebuilds a node from the records its log kept, exactly as the daemon does at start:
    /// committed data, prepared transactions (with their locks re-acquired before anything
    /// else is served), acceptor promises and votes, and the highest ballot round used.
    ///
    /// Never panics on what the log says: a CRC-valid record that no correct run writes
    /// (corruption that kept its checksum, or a log an older version wrote under attack)
    /// is capped or skipped with an [`Event::ReplayAnomaly`] saying which and why (see
    /// [`ReplayProblem`]). A restart takes the next leader round as its incarnation; past
    /// [`ROUND_MAX`] the node leads no recovery ([`Event::RecoveryRoundsExhausted`]), and
    /// at [`LEADER_ROUND_MAX`] its incarnation stops growing too.
    pub fn recover(
        config: NodeConfig,
        now: Time,
        records: impl IntoIterator<Item = Record>,
    ) -> Node {
        let mut node = Node::replay_log(config, records);
        node.restart(now);
        node
    }

    /// The state a log states, before the restart step of [`Node::recover`] (no fresh
    /// leader round, no re-acquired locks, no deadlines): what [`Node::checkpoint_records`]
    /// restates. Not meant to be driven; use `recover` to run a node.
    pub fn replay_log(config: NodeConfig, records: impl IntoIterator<Item = Record>) -> Node {
        let mut node = Node::new(config);
        for record in records {
            node.replay(record);
        }
        node
    }

    /// The checkpoint of a durable log: the records of [`Node::checkpoint_records`] for the
    /// node that `records` replay to with an outcome window of `outcomes_kept_max`, which
    /// must be the node's own `Limits::outcomes_kept_max`. (Another window keeps another
    /// set of outcomes, and a vote the node wrote after forgetting an old outcome would be
    /// skipped by one replay and kept by the other.)
    ///
    /// Replay reads no identity, membership, clock or randomness, only the outcome window,
    /// so this needs no `NodeConfig`: a runtime's log compactor can call it without
    /// knowing the cluster. `recover(config, now, checkpoint_log(records, window))` equals
    /// `recover(config, now, records)`, and records appended after the checkpoint replay
    /// on it as they would after `records`.
    pub fn checkpoint_log(
        records: impl IntoIterator<Item = Record>,
        outcomes_kept_max: usize,
    ) -> Vec<Record> {
        let member = crate::cluster::Member {
            id: NodeId(1),
            name: "checkpoint".to_string(),
        };
        // One member, F=0: always a valid cluster.
        let cluster = Cluster::new(vec![member], 0).expect("a one-member cluster is valid");
        let mut config = NodeConfig::new(NodeId(1), cluster, 0);
        config.limits.outcomes_kept_max = outcomes_kept_max;
        config.detector = None;
        Node::replay_log(config, records).checkpoint_records()
    }

    /// Records that, replayed by [`Node::recover`] alone, rebuild this node's replayed
    /// state: committed rows with their versions and the commit sequence (`Snapshot`),
    /// the compact outcome window in order (`Outcomes`), the highest leader round, and
    /// for each undecided transaction the RM's vote (with its redo writes and locks) and
    /// the acceptor state of each instance. Its size follows the data and the open
    /// state, not the number of transactions ever run (the outcome window is bounded by
    /// `Limits::outcomes_kept_max`).
    ///
    /// Call it on a node built by [`Node::replay_log`] from what a log holds durably (as
    /// [`Node::checkpoint_log`] does). A live node's state also reflects records whose
    /// `Persist` may still be in flight and outcomes it learned without a record;
    /// checkpointing it would make durable what was never acknowledged as durable.
    pub fn checkpoint_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        if self.quarantine.is_some() {
            records.push(Record::AcceptorFence { cleared: false });
        }
        if self.leader_round > 0 {
            records.push(Record::LeaderRound {
                round: self.leader_round,
            });
        }
        self.checkpoint_rows(&mut records);
        self.checkpoint_resource(&mut records);
        let order: Vec<(TxnId, Outcome)> = self
            .outcome_order
            .iter()
            .filter_map(|txn| Some((*txn, self.outcomes.get(txn)?.outcome)))
            .collect();
        for chunk in order.chunks(crate::record::OUTCOMES_PER_RECORD_MAX) {
            records.push(Record::Outcomes {
                outcomes: chunk.to_vec(),
            });
        }
        for entry in self.txns.values() {
            if let Some(rm) = &entry.rm {
                records.push(Record::Vote {
                    descriptor: entry.descriptor.clone(),
                    vote: rm.vote,
                    reason: rm.reason.clone(),
                    writes: rm.writes.clone(),
                    locks: rm.locks.clone(),
                    // Not replayed (the log's audit trail keeps them; a restart reports
                    // reads lost).
                    read_versions: Vec::new(),
                });
            }
            for (rm, state) in &entry.acceptor {
                records.push(Record::Acceptor {
                    descriptor: entry.descriptor.clone(),
                    rm: *rm,
                    state: *state,
                });
            }
        }
        records
    }

    /// The store as `Snapshot` records of about `SNAPSHOT_RECORD_BYTES_TARGET` each.
    fn checkpoint_rows(&self, records: &mut Vec<Record>) {
        /// Encoded bytes of a row besides its key and value (tags, lengths, version).
        const ROW_OVERHEAD_BYTES: usize = 16;
        let commit_sequence = self.store.commit_sequence();
        let mut rows = Vec::new();
        let mut rows_bytes = 0;
        for (key, row) in self.store.rows() {
            let row_bytes = key.as_str().len() + row.value.0.len() + ROW_OVERHEAD_BYTES;
            if !rows.is_empty()
                && rows_bytes + row_bytes > crate::record::SNAPSHOT_RECORD_BYTES_TARGET
            {
                records.push(Record::Snapshot {
                    commit_sequence,
                    rows: core::mem::take(&mut rows),
                });
                rows_bytes = 0;
            }
            rows.push((key.clone(), row.value.clone(), row.version));
            rows_bytes += row_bytes;
        }
        if !rows.is_empty() || commit_sequence > 0 {
            records.push(Record::Snapshot {
                commit_sequence,
                rows,
            });
        }
    }

    /// The restart step of [`Node::recover`].
    fn restart(&mut self, now: Time) {
        // A restart takes a fresh leader round and uses it as the failure detector's
        // incarnation: both only need to grow across restarts, and one record serves both.
        // Rounds above ROUND_MAX serve only as incarnations (no ballot uses them).
        match self
            .leader_round
            .checked_add(1)
            .filter(|round| *round <= LEADER_ROUND_MAX)
        {
            Some(round) => {
                self.leader_round = round;
                self.stage_record(Record::LeaderRound { round }, Gates::Sends);
            }
            None => self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: None,
                leader_round: self.leader_round,
            }),
        }
        if self.leader_round > ROUND_MAX && self.leader_round < LEADER_ROUND_MAX {
            self.events.push_back(Event::RecoveryRoundsExhausted {
                txn: None,
                leader_round: self.leader_round,
            });
        }
        self.finish_one_phase_votes();
        self.restart_resource(now);
        let incarnation = u64::from(self.leader_round);
        self.start_detector(now, incarnation);
        if self.quarantine.is_some() {
            self.enter_quarantine(now);
        }
        let timeout = self.config.decision_timeout;
        let mut relock = Vec::new();
        for (txn, entry) in &self.txns {
            if let Some(rm) = &entry.rm {
                if rm.vote == Vote::Prepared {
                    relock.push((*txn, rm.locks.clone()));
                }
            }
        }
        for (txn, locks) in relock {
            if self.locks.try_acquire_all(txn, &locks).is_ok() {
                continue;
            }
            // Only a corrupt log lists two prepared transactions with conflicting locks:
            // keep every lock anyway (see `ReplayProblem::ConflictingPreparedLocks`).
            for (key, mode) in locks {
                if !self.locks.hold_despite_conflicts(txn, &key, mode) {
                    self.events.push_back(Event::ReplayAnomaly {
                        problem: ReplayProblem::ConflictingPreparedLocks { txn, key },
                    });
                }
            }
        }
        let txns: Vec<(TxnId, bool)> = self
            .txns
            .iter()
            .map(|(txn, entry)| (*txn, entry.descriptor.is_participant(self.config.id)))
            .collect();
        for (txn, participant) in txns {
            let wait = if participant {
                timeout
            } else {
                timeout.saturating_mul(2)
            };
            let jitter = self.jitter(wait);
            self.set_deadline(txn, now.saturating_add(jitter));
        }
    }

    /// One-phase votes the log holds without their Outcome record (the write that held
    /// both was torn between them): nothing was told of them (every answer waited for that
    /// write), and the durable vote decides, as it would have (Commit iff Prepared).
    fn finish_one_phase_votes(&mut self) {
        let undecided: Vec<(TxnId, Outcome)> = self
            .txns
            .iter()
            .filter(|(_, entry)| entry.descriptor.is_one_phase())
            .filter_map(|(txn, entry)| {
                let outcome = match entry.rm.as_ref()?.vote {
                    Vote::Prepared => Outcome::Commit,
                    Vote::Aborted => Outcome::Abort,
                };
                Some((*txn, outcome))
            })
            .collect();
        for (txn, outcome) in undecided {
            self.stage_record(Record::Outcome { txn, outcome }, Gates::Sends);
            self.replay_outcome(txn, outcome);
        }
    }

    fn replay(&mut self, record: Record) {
        match record {
            Record::Vote {
                descriptor,
                vote,
                reason,
                writes,
                locks,
                read_versions: _,
            } => {
                let txn = descriptor.txn;
                if self.outcomes.contains_key(&txn) || !self.replayable(&descriptor) {
                    return;
                }
                let rm = RmPart {
                    vote,
                    reason,
                    writes,
                    locks,
                    reads: None,
                    client_has_reads: false,
                };
                let added = reserved_bytes(&rm);
                let entry = self.entry_for_replay(descriptor);
                let replaced = entry.rm.replace(rm).map_or(0, |old| reserved_bytes(&old));
                self.prepared_bytes = self
                    .prepared_bytes
                    .saturating_add(added)
                    .saturating_sub(replaced);
            }
            Record::Acceptor {
                descriptor,
                rm,
                state,
            } => {
                let txn = descriptor.txn;
                if self.outcomes.contains_key(&txn) || !self.replayable(&descriptor) {
                    return;
                }
                if !invariants::acceptor_state_well_formed(&state) {
                    let problem = ReplayProblem::AcceptorStateMalformed { txn, rm };
                    return self.events.push_back(Event::ReplayAnomaly { problem });
                }
                let entry = self.entry_for_replay(descriptor);
                let slot = entry.acceptor.entry(rm).or_default();
                if !invariants::acceptor_step_monotonic(slot, &state) {
                    let problem = ReplayProblem::AcceptorStateRegressed { txn, rm };
                    return self.events.push_back(Event::ReplayAnomaly { problem });
                }
                *slot = state;
            }
            Record::LeaderRound { round } => {
                let round = if round > LEADER_ROUND_MAX {
                    let problem = ReplayProblem::LeaderRoundCapped { round };
                    self.events.push_back(Event::ReplayAnomaly { problem });
                    ROUND_MAX
                } else {
                    round
                };
                self.leader_round = self.leader_round.max(round);
            }
            Record::Outcome { txn, outcome } => self.replay_outcome(txn, outcome),
            Record::Snapshot {
                commit_sequence,
                rows,
            } => self.store.restore(commit_sequence, rows),
            Record::Outcomes { outcomes } => {
                for (txn, outcome) in outcomes {
                    self.replay_outcome(txn, outcome);
                }
            }
            Record::ResourcePrepare { .. }
            | Record::ResourceDone { .. }
            | Record::ResourceOwed { .. } => self.replay_resource(record),
            Record::AcceptorFence { cleared } => {
                // Its time is set by the restart step.
                self.quarantine = (!cleared).then(|| fence::Quarantine::new(Time::ZERO));
            }
        }
    }

    fn replay_outcome(&mut self, txn: TxnId, outcome: Outcome) {
        let entry = self.txns.remove(&txn);
        if let Some(rm) = entry.and_then(|entry| entry.rm) {
            self.prepared_bytes = self.prepared_bytes.saturating_sub(reserved_bytes(&rm));
            if outcome == Outcome::Commit {
                if rm.vote == Vote::Prepared {
                    self.store.apply(&rm.writes);
                } else {
                    let problem = ReplayProblem::CommitOfAbortedVote { txn };
                    self.events.push_back(Event::ReplayAnomaly { problem });
                }
            }
        }
        // Read results are not durable: after a restart they are reported lost.
        self.keep_outcome(txn, outcome, None);
    }

    /// True if a replayed record's descriptor has a shape a live message could have had;
    /// otherwise reports it (see `ReplayProblem::MalformedDescriptor`).
    fn replayable(&mut self, descriptor: &TxnDescriptor) -> bool {
        let Err(problem) = descriptor.validate() else {
            return true;
        };
        let txn = descriptor.txn;
        let problem = ReplayProblem::MalformedDescriptor { txn, problem };
        self.events.push_back(Event::ReplayAnomaly { problem });
        false
    }

    fn entry_for_replay(&mut self, descriptor: TxnDescriptor) -> &mut TxnEntry {
        self.txns
            .entry(descriptor.txn)
            .or_insert_with(|| TxnEntry::new(descriptor, Time::ZERO))
    }
}
