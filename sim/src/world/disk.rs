//! Simulated disks: writes, group-commit fsyncs, power cuts that keep only synced bytes
//! (or a torn tail), and restarts that recover a node from what its disk kept.

use super::nodes::Host;
use super::{Action, Phase, Simulation};
use crate::checker::{HistoryEntry, NodeHistory, Violation};
use crate::simulated_address;
use dtx_protocol::{decode_log, encode_record, Input, Key, Node, PersistToken, Record, Value};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
pub(super) struct Disk {
    pub(super) bytes: Vec<u8>,
    pub(super) synced: usize,
    pub(super) pending: Option<(PersistToken, usize)>,
    pub(super) syncing: bool,
    /// Records at the head of `bytes` that are a checkpoint (see `checkpoints_on` and
    /// `compact_durable_prefix`).
    pub(super) checkpoint_records: usize,
    /// Bytes the last compaction left (0 before any): the next one waits until the
    /// durable prefix has doubled, so compaction costs O(1) per record amortized.
    compacted_bytes: usize,
    /// The durable history of this disk for the checkers, fed record by record as records
    /// become durable (synced, or kept in a torn tail a restart accepted), so that neither
    /// the records checkpoints compact away nor a decoded copy of the log must be kept.
    history: NodeHistory,
    /// What the history needs of each record written but not yet durable, with the end
    /// of the record in `bytes`, in write order.
    unsynced: VecDeque<(usize, HistoryEntry)>,
}

impl Disk {
    /// Appends `records` to the (unsynced) log.
    fn write(&mut self, records: Vec<Record>) {
        for record in records {
            if let Err(error) = encode_record(&record, &mut self.bytes) {
                panic!("record does not encode: {error}");
            }
            if let Some(entry) = HistoryEntry::from_record(record) {
                self.unsynced.push_back((self.bytes.len(), entry));
            }
        }
    }

    /// Hands the history every written record that ends within the first `durable_bytes`.
    fn absorb_durable(&mut self, durable_bytes: usize) {
        while let Some((end, _)) = self.unsynced.front() {
            if *end > durable_bytes {
                break;
            }
            let Some((_, entry)) = self.unsynced.pop_front() else {
                break;
            };
            self.history.apply(entry);
        }
    }

    /// Replaces the durable prefix of the log by its checkpoint (`Node::checkpoint_log`,
    /// as the daemon's log compactor does with sealed segments) once it has grown past
    /// `after_bytes` ([`compact_after_bytes`]) and twice what the last compaction left, keeping the
    /// unsynced tail after it. So a long run's disks stay the size of the state they
    /// restate, not of the history. Called only between fsyncs (no `Synced` in flight
    /// holds an offset into `bytes`); the pending fsync's length and the history's
    /// offsets of unsynced records move with the tail. Returns the records compacted
    /// and the checkpoint's record count.
    fn compact_durable_prefix(
        &mut self,
        after_bytes: usize,
        outcomes_kept_max: usize,
    ) -> Option<(usize, usize)> {
        if self.syncing || self.synced < after_bytes.max(2 * self.compacted_bytes) {
            return None;
        }
        let contents = decode_log(&self.bytes[..self.synced]);
        if let Some(problem) = contents.tail_problem {
            panic!("the durable prefix of a simulated disk does not decode: {problem}");
        }
        let compacted = contents.records.len();
        let checkpoint = Node::checkpoint_log(contents.records, outcomes_kept_max);
        let old_synced = self.synced;
        let new_synced = self.install_checkpoint(&checkpoint);
        let moved = |end: usize| end.saturating_sub(old_synced) + new_synced;
        for (end, _) in &mut self.unsynced {
            *end = moved(*end);
        }
        if let Some((_, length)) = &mut self.pending {
            *length = moved(*length);
        }
        Some((compacted, checkpoint.len()))
    }

    /// Replaces the durable prefix (`bytes[..synced]`) by `checkpoint`, keeping the unsynced
    /// tail after it; the checkpoint is durable. Returns its length in bytes.
    fn install_checkpoint(&mut self, checkpoint: &[Record]) -> usize {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.synced + self.synced / 2);
        for record in checkpoint {
            if let Err(error) = encode_record(record, &mut bytes) {
                panic!("checkpoint record does not encode: {error}");
            }
        }
        let checkpoint_bytes = bytes.len();
        bytes.extend_from_slice(&self.bytes[self.synced..]);
        self.bytes = bytes;
        self.synced = checkpoint_bytes;
        self.compacted_bytes = checkpoint_bytes;
        self.checkpoint_records = checkpoint.len();
        checkpoint_bytes
    }

    /// The node's whole history at the end of the run: every record written, including
    /// those checkpoints compacted away (checkpoint records themselves restate state and
    /// are not part of it).
    pub(super) fn take_history(&mut self) -> NodeHistory {
        self.absorb_durable(usize::MAX);
        std::mem::take(&mut self.history)
    }
}

/// Durable log bytes below which a simulated disk is not compacted during a run: 4 MiB,
/// or 16 KiB on half the seeds (those with bit 1 set, even and odd alike), so that sweeps
/// compact mid-run, under every fault, and restarts recover from a checkpoint followed by
/// a tail (odd seeds) as well as compare it with the full replay (even seeds). Drawn
/// without the run's PRNG: compaction changes no event, so outputs stay byte-identical.
pub(super) fn compact_after_bytes(seed: u64) -> usize {
    if seed & 2 == 0 {
        4 << 20
    } else {
        16 << 10
    }
}

/// Seeds on which every restart first compacts the node's disk to
/// `Node::checkpoint_log` of what it holds (as the daemon's log compactor does) and
/// recovers from that, so the snapshot path runs under every fault. A per-seed flag
/// drawn without the run's PRNG: the other seeds replay exactly as before.
pub(super) fn checkpoints_on(seed: u64) -> bool {
    seed.is_multiple_of(2)
}

impl Simulation {
    pub(super) fn disk_write(&mut self, index: usize, token: PersistToken, records: Vec<Record>) {
        let disk = &mut self.hosts[index].disk;
        disk.write(records);
        disk.pending = Some((token, disk.bytes.len()));
        if !disk.syncing {
            self.start_sync(index);
        }
    }

    /// Group commit: one fsync covers everything written while the previous one ran.
    pub(super) fn start_sync(&mut self, index: usize) {
        let Some((token, length)) = self.hosts[index].disk.pending.take() else {
            return;
        };
        self.hosts[index].disk.syncing = true;
        self.measured.stats.fsyncs += 1;
        let incarnation = self.hosts[index].incarnation;
        let latency = self.rng.between(
            self.params.fsync_min_micros,
            self.params
                .fsync_max_micros
                .max(self.params.fsync_min_micros),
        );
        self.after(
            latency,
            Action::Synced {
                index,
                incarnation,
                token,
                length,
            },
        );
    }

    pub(super) fn on_synced(
        &mut self,
        index: usize,
        incarnation: u64,
        token: PersistToken,
        length: usize,
    ) {
        if self.hosts[index].incarnation != incarnation {
            return;
        }
        let disk = &mut self.hosts[index].disk;
        disk.synced = disk.synced.max(length);
        disk.syncing = false;
        let synced = disk.synced;
        disk.absorb_durable(synced);
        let window = self.hosts[index].config.limits.outcomes_kept_max;
        let after_bytes = compact_after_bytes(self.config.seed);
        let disk = &mut self.hosts[index].disk;
        if let Some((compacted, kept)) = disk.compact_durable_prefix(after_bytes, window) {
            self.measured.stats.log_compactions += 1;
            if self.trace.is_some() {
                eprintln!(
                    "{:>10} compaction n{}: {compacted} records into {kept}",
                    self.now.as_micros(),
                    index + 1
                );
            }
        }
        self.node_input(index, Input::Persisted { token });
        self.start_sync(index);
    }

    /// Crashes a node like a power loss: synced bytes survive; with `torn`, a random part of
    /// the unsynced tail survives too, its last record possibly torn or corrupted.
    pub(super) fn power_cut(&mut self, index: usize, torn: bool) {
        if self.trace.is_some() {
            eprintln!("{:>10} power cut n{}", self.now.as_micros(), index + 1);
        }
        let crashed = self.hosts[index].config.id;
        if self.phase == Phase::Safety && self.hosts[index].node.is_some() {
            // Transactions of this participant still undecided somewhere: how long until
            // someone decides them is the recovery time it causes.
            for host in &self.hosts {
                let Some(node) = &host.node else { continue };
                for descriptor in node.undecided() {
                    if descriptor.participants.contains(&crashed) {
                        self.measured
                            .stranded
                            .entry(descriptor.txn)
                            .or_insert(self.now);
                    }
                }
            }
        }
        let host = &mut self.hosts[index];
        if host.node.take().is_none() {
            return;
        }
        self.measured.stats.crashes += u64::from(self.phase == Phase::Safety);
        self.measured.crashed_at.insert(host.config.id, self.now);
        host.incarnation += 1;
        host.timer_armed = None;
        let disk = &mut host.disk;
        let unsynced = disk.bytes.len() - disk.synced;
        let kept = if torn && unsynced > 0 {
            self.rng.below(unsynced as u64 + 1) as usize
        } else {
            0
        };
        disk.bytes.truncate(disk.synced + kept);
        if kept > 0 && self.rng.chance(0.3) {
            let offset = disk.synced + self.rng.below(kept as u64) as usize;
            disk.bytes[offset] ^= 0x5a;
        }
        disk.pending = None;
        disk.syncing = false;
    }

    /// Restarts a crashed node from what its disk kept, through `Node::recover`.
    pub(super) fn restart(&mut self, index: usize) {
        if self.hosts[index].node.is_some() {
            return;
        }
        let now = self.now;
        self.measured
            .restarted_at
            .insert(self.hosts[index].config.id, now);
        let host = &mut self.hosts[index];
        let contents = decode_log(&host.disk.bytes);
        host.disk.bytes.truncate(contents.valid_length_bytes);
        host.disk.synced = host.disk.bytes.len();
        // What survived is durable now; the rest of what was written is gone.
        let synced = host.disk.synced;
        host.disk.absorb_durable(synced);
        host.disk.unsynced.clear();
        if self.trace.is_some() {
            eprintln!(
                "{:>10} restart n{} from {} records ({:?})",
                now.as_micros(),
                index + 1,
                contents.records.len(),
                contents.tail_problem
            );
        }
        let mut node = if checkpoints_on(self.config.seed) {
            self.restart_from_checkpoint(index, contents.records)
        } else {
            Node::recover(host.config.clone(), now, contents.records)
        };
        node.set_addresses(vec![simulated_address(node.id())]);
        self.observer.after_restart(&node);
        self.hosts[index].node = Some(node);
        self.drain_node(index);
    }

    /// Compacts the disk of host `index` (which holds exactly `records`, all durable) to
    /// their checkpoint and recovers from it; recovering from the records themselves must
    /// give the same node.
    pub(super) fn restart_from_checkpoint(&mut self, index: usize, records: Vec<Record>) -> Node {
        let now = self.now;
        let host = &mut self.hosts[index];
        let window = host.config.limits.outcomes_kept_max;
        let checkpoint = Node::checkpoint_log(records.clone(), window);
        let disk = &mut host.disk;
        let compacted = records.len().saturating_sub(disk.checkpoint_records);
        // At a restart every byte left is durable: the checkpoint replaces all of them.
        disk.install_checkpoint(&checkpoint);
        if self.trace.is_some() {
            eprintln!(
                "{:>10} checkpoint n{}: {} records compacted into {}",
                now.as_micros(),
                index + 1,
                compacted,
                checkpoint.len()
            );
        }
        let from_checkpoint = Node::recover(host.config.clone(), now, checkpoint);
        if from_checkpoint != Node::recover(host.config.clone(), now, records) {
            self.extra_violations
                .push(Violation::CheckpointEquivalence {
                    node_number: index + 1,
                });
        }
        from_checkpoint
    }
}

pub(super) fn store_values(host: &Host) -> BTreeMap<Key, Value> {
    host.node
        .as_ref()
        .map(|node| {
            node.store()
                .rows()
                .iter()
                .map(|(key, row)| (key.clone(), row.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}
