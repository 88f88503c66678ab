//! An RM's committed data and its row lock table.
//!
//! Committed data lives in an ordered map (rebuilt at restart from the log, or from a
//! checkpoint's snapshot), each row with the version that wrote it; the map also counts the
//! bytes the storage quota bounds. Uncommitted writes are not here: they stay with their
//! transaction (its vote record, or its execution's intents) until the decision.
//!
//! Locks follow strict two-phase locking: held until the decision (only a read-only
//! participant whose lock point has passed releases its shared locks at prepare). The
//! table has two ways in, because only one of them may wait:
//! - interactive execution waits: [`LockTable::request`] queues a conflicting request FIFO
//!   per key (an S→X upgrade by a holder jumps the queue; a full queue refuses, which is
//!   backpressure), and the node breaks the deadlocks that waiting can create according to
//!   its `DeadlockPolicy` (edge chasing or wound-wait, `node/deadlock.rs`), with the
//!   lock-wait timeout as the backstop;
//! - prepare never waits: a one-shot Prepare, writes buffered until prepare and the
//!   re-acquisition of prepared transactions' locks at restart use
//!   [`LockTable::try_acquire_all`], all or nothing, and on a conflict the RM votes
//!   Aborted with the contended key.

use crate::record::LockMode;
use crate::types::{Key, TxnId, Value, Version};
use std::collections::{BTreeMap, VecDeque};

/// A committed row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    /// Its value.
    pub value: Value,
    /// The commit sequence number that wrote it.
    pub version: Version,
}

/// Committed key/value data of one RM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Store {
    rows: BTreeMap<Key, Row>,
    commit_sequence: u64,
    /// Bytes of keys and values in `rows` (what the storage quota counts).
    bytes: u64,
}

/// Bytes a row of `key` and `value` counts for the storage quota.
pub fn row_bytes(key: &Key, value: &Value) -> u64 {
    (key.as_str().len() as u64).saturating_add(value.0.len() as u64)
}

impl Store {
    /// The committed value and version of `key` (`None`, version 0 when absent).
    pub fn get(&self, key: &Key) -> (Option<&Value>, Version) {
        match self.rows.get(key) {
            Some(row) => (Some(&row.value), row.version),
            None => (None, Version(0)),
        }
    }

    /// Installs a committed transaction's writes; returns the version they got.
    ///
    /// The sequence saturates: it can only reach `u64::MAX` from a checkpoint record that
    /// says so (no store commits that often), and refusing to apply a decided Commit
    /// would be worse than versions that stop growing.
    pub fn apply(&mut self, writes: &[(Key, Option<Value>)]) -> Version {
        self.commit_sequence = self.commit_sequence.saturating_add(1);
        let version = Version(self.commit_sequence);
        for (key, value) in writes {
            match value {
                Some(value) => {
                    self.bytes = self.bytes.saturating_add(row_bytes(key, value));
                    let row = Row {
                        value: value.clone(),
                        version,
                    };
                    if let Some(old) = self.rows.insert(key.clone(), row) {
                        self.bytes = self.bytes.saturating_sub(row_bytes(key, &old.value));
                    }
                }
                None => {
                    if let Some(old) = self.rows.remove(key) {
                        self.bytes = self.bytes.saturating_sub(row_bytes(key, &old.value));
                    }
                }
            }
        }
        version
    }

    /// All rows in key order.
    pub fn rows(&self) -> &BTreeMap<Key, Row> {
        &self.rows
    }

    /// Bytes of committed keys and values (what `Limits::store_bytes_max` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many bytes `writes` would add to the committed data if applied now: each
    /// write counts what it grows its row by (a delete or a shrinking write counts 0).
    pub fn growth_bytes<'a>(
        &self,
        writes: impl IntoIterator<Item = (&'a Key, &'a Option<Value>)>,
    ) -> u64 {
        writes
            .into_iter()
            .filter_map(|(key, value)| {
                let new = row_bytes(key, value.as_ref()?);
                let old = self
                    .rows
                    .get(key)
                    .map_or(0, |row| row_bytes(key, &row.value));
                Some(new.saturating_sub(old))
            })
            .fold(0, u64::saturating_add)
    }

    /// Commits applied so far (the last version handed out).
    pub fn commit_sequence(&self) -> u64 {
        self.commit_sequence
    }

    /// Installs rows as a checkpoint stated them, versions included, and raises the
    /// commit sequence to at least `commit_sequence` (it never goes down: versions are
    /// never handed out twice).
    pub fn restore(&mut self, commit_sequence: u64, rows: Vec<(Key, Value, Version)>) {
        self.commit_sequence = self.commit_sequence.max(commit_sequence);
        for (key, value, version) in rows {
            self.bytes = self.bytes.saturating_add(row_bytes(&key, &value));
            if let Some(old) = self.rows.get(&key) {
                self.bytes = self.bytes.saturating_sub(row_bytes(&key, &old.value));
            }
            self.rows.insert(key, Row { value, version });
        }
    }
}

/// Default bound on a key's wait queue.
pub const LOCK_QUEUE_LENGTH_MAX: usize = 1024;

/// How a lock request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockRequest {
    /// Held now.
    Granted,
    /// Queued behind conflicting holders or earlier waiters (FIFO).
    Waiting,
    /// The key's queue is full (backpressure): the request was not queued.
    QueueFull,
}

/// A waiter that a release let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The transaction.
    pub txn: TxnId,
    /// The key.
    pub key: Key,
    /// The mode granted.
    pub mode: LockMode,
}

/// Holders and the FIFO wait queue of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct LockEntry {
    holders: BTreeMap<TxnId, LockMode>,
    queue: VecDeque<(TxnId, LockMode)>,
}

/// Row locks: shared or exclusive per key, with FIFO wait queues and S→X upgrades.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockTable {
    locks: BTreeMap<Key, LockEntry>,
    queue_length_max: usize,
}

impl Default for LockTable {
    fn default() -> Self {
        LockTable::new(LOCK_QUEUE_LENGTH_MAX)
    }
}

impl LockTable {
    /// A lock table whose queues hold at most `queue_length_max` waiters per key.
    pub fn new(queue_length_max: usize) -> LockTable {
        LockTable {
            locks: BTreeMap::new(),
            queue_length_max,
        }
    }

    /// Takes every lock in `wanted` for `txn` now, or none of them (no waiting): `Err` names
    /// the first key held in a conflicting mode or with waiters queued (FIFO fairness; an
    /// upgrade by a holder jumps the queue, as in [`LockTable::request`]).
    pub fn try_acquire_all(&mut self, txn: TxnId, wanted: &[(Key, LockMode)]) -> Result<(), Key> {
        for (key, mode) in wanted {
            if let Some(entry) = self.locks.get(key) {
                let held = entry.holders.get(&txn).copied();
                let already = held.is_some_and(|held| held >= *mode);
                let upgrade = held.is_some();
                if !already
                    && (!(upgrade || entry.queue.is_empty()) || !grantable(entry, txn, *mode))
                {
                    return Err(key.clone());
                }
            }
        }
        for (key, mode) in wanted {
            let entry = self.locks.entry(key.clone()).or_default();
            let held = entry.holders.entry(txn).or_insert(*mode);
            *held = (*held).max(*mode);
        }
        Ok(())
    }

    /// Makes `txn` hold `key` in `mode` even if another holder conflicts; returns false
    /// if it did conflict. Only for restart, when a corrupt log lists two prepared
    /// transactions with conflicting locks: both keep the key, so no new transaction can
    /// take it before both are decided (an exclusive holder is then not alone, which no
    /// other path allows).
    pub fn hold_despite_conflicts(&mut self, txn: TxnId, key: &Key, mode: LockMode) -> bool {
        let entry = self.locks.entry(key.clone()).or_default();
        let free = grantable(entry, txn, mode);
        let held = entry.holders.entry(txn).or_insert(mode);
        *held = (*held).max(mode);
        free
    }

    /// Asks for `key` in `mode`: granted at once if compatible with the holders and no one
    /// waits ahead (an upgrade by a holder jumps the queue), else queued.
    pub fn request(&mut self, txn: TxnId, key: &Key, mode: LockMode) -> LockRequest {
        let queue_length_max = self.queue_length_max;
        let entry = self.locks.entry(key.clone()).or_default();
        let held = entry.holders.get(&txn).copied();
        if held.is_some_and(|held| held >= mode) {
            return LockRequest::Granted;
        }
        if entry.queue.iter().any(|(waiter, _)| *waiter == txn) {
            return LockRequest::Waiting;
        }
        let upgrade = held.is_some();
        if (upgrade || entry.queue.is_empty()) && grantable(entry, txn, mode) {
            entry.holders.insert(txn, mode);
            return LockRequest::Granted;
        }
        if entry.queue.len() >= queue_length_max {
            return LockRequest::QueueFull;
        }
        if upgrade {
            // Upgraders go first: they already hold the key, so letting newcomers in ahead
            // of them could only add waiting.
            let position = entry
                .queue
                .iter()
                .position(|(waiter, _)| !entry.holders.contains_key(waiter))
                .unwrap_or(entry.queue.len());
            entry.queue.insert(position, (txn, mode));
        } else {
            entry.queue.push_back((txn, mode));
        }
        LockRequest::Waiting
    }

    /// Releases `txn`'s locks and queued requests on `keys`; returns the waiters this let
    /// through, in grant order.
    pub fn release(&mut self, txn: TxnId, keys: impl IntoIterator<Item = Key>) -> Vec<Grant> {
        let mut grants = Vec::new();
        for key in keys {
            let Some(entry) = self.locks.get_mut(&key) else {
                continue;
            };
            entry.holders.remove(&txn);
            entry.queue.retain(|(waiter, _)| *waiter != txn);
            grant_waiters(&key, entry, &mut grants);
            if entry.holders.is_empty() && entry.queue.is_empty() {
                self.locks.remove(&key);
            }
        }
        grants
    }

    /// Withdraws `txn`'s queued request on `key` (its wait was aborted); returns waiters
    /// this let through.
    pub fn cancel(&mut self, txn: TxnId, key: &Key) -> Vec<Grant> {
        let mut grants = Vec::new();
        if let Some(entry) = self.locks.get_mut(key) {
            entry.queue.retain(|(waiter, _)| *waiter != txn);
            grant_waiters(key, entry, &mut grants);
            if entry.holders.is_empty() && entry.queue.is_empty() {
                self.locks.remove(key);
            }
        }
        grants
    }

    /// The transactions `txn` waits for on `key`: conflicting holders and conflicting
    /// waiters queued ahead of it (the local wait-for edges).
    pub fn waits_for(&self, txn: TxnId, key: &Key) -> Vec<TxnId> {
        let Some(entry) = self.locks.get(key) else {
            return Vec::new();
        };
        let Some(position) = entry.queue.iter().position(|(waiter, _)| *waiter == txn) else {
            return Vec::new();
        };
        let mode = entry.queue[position].1;
        let mut blockers: Vec<TxnId> = entry
            .holders
            .iter()
            .filter(|(holder, held)| **holder != txn && conflicts(**held, mode))
            .map(|(holder, _)| *holder)
            .collect();
        for (waiter, wanted) in entry.queue.iter().take(position) {
            if conflicts(*wanted, mode) && !blockers.contains(waiter) {
                blockers.push(*waiter);
            }
        }
        blockers
    }

    /// The mode `txn` holds `key` in, if any.
    pub fn held(&self, txn: TxnId, key: &Key) -> Option<LockMode> {
        self.locks.get(key)?.holders.get(&txn).copied()
    }

    /// The transactions holding `key`, with their modes.
    pub fn holders(&self, key: &Key) -> Option<&BTreeMap<TxnId, LockMode>> {
        self.locks.get(key).map(|entry| &entry.holders)
    }

    /// Transactions queued on `key`, in order.
    pub fn waiters(&self, key: &Key) -> Vec<(TxnId, LockMode)> {
        self.locks
            .get(key)
            .map(|entry| entry.queue.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Keys currently locked or waited on.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// True if no key is locked or waited on.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

/// True if a lock held in `held` blocks a request for `wanted` by another transaction.
pub fn conflicts(held: LockMode, wanted: LockMode) -> bool {
    held == LockMode::Exclusive || wanted == LockMode::Exclusive
}

fn grantable(entry: &LockEntry, txn: TxnId, mode: LockMode) -> bool {
    entry
        .holders
        .iter()
        .all(|(holder, held)| *holder == txn || !conflicts(*held, mode))
}

/// Strict FIFO: grant from the front while the front is grantable.
fn grant_waiters(key: &Key, entry: &mut LockEntry, grants: &mut Vec<Grant>) {
    while let Some((waiter, mode)) = entry.queue.front().copied() {
        if !grantable(entry, waiter, mode) {
            break;
        }
        entry.queue.pop_front();
        let held = entry.holders.entry(waiter).or_insert(mode);
        *held = (*held).max(mode);
        grants.push(Grant {
            txn: waiter,
            key: key.clone(),
            mode,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;
    use proptest::prelude::*;

    fn txn(sequence: u64) -> TxnId {
        TxnId {
            client: NodeId(1),
            sequence,
        }
    }

    #[test]
    fn shared_locks_coexist_exclusive_does_not() {
        let mut locks = LockTable::default();
        let key = Key::new("k");
        assert!(locks
            .try_acquire_all(txn(1), &[(key.clone(), LockMode::Shared)])
            .is_ok());
        assert!(locks
            .try_acquire_all(txn(2), &[(key.clone(), LockMode::Shared)])
            .is_ok());
        assert_eq!(
            locks.try_acquire_all(txn(3), &[(key.clone(), LockMode::Exclusive)]),
            Err(key.clone())
        );
        locks.release(txn(1), [key.clone()]);
        locks.release(txn(2), [key.clone()]);
        assert!(locks
            .try_acquire_all(txn(3), &[(key, LockMode::Exclusive)])
            .is_ok());
    }

    #[test]
    fn failed_acquire_takes_nothing() {
        let mut locks = LockTable::default();
        let (a, b) = (Key::new("a"), Key::new("b"));
        locks
            .try_acquire_all(txn(1), &[(b.clone(), LockMode::Exclusive)])
            .unwrap();
        assert!(locks
            .try_acquire_all(
                txn(2),
                &[(a.clone(), LockMode::Exclusive), (b, LockMode::Shared)]
            )
            .is_err());
        assert!(locks.holders(&a).is_none());
    }

    #[test]
    fn waiters_are_granted_in_fifo_order_and_upgrades_go_first() {
        let mut locks = LockTable::default();
        let key = Key::new("k");
        assert_eq!(
            locks.request(txn(1), &key, LockMode::Shared),
            LockRequest::Granted
        );
        assert_eq!(
            locks.request(txn(2), &key, LockMode::Shared),
            LockRequest::Granted
        );
        assert_eq!(
            locks.request(txn(3), &key, LockMode::Exclusive),
            LockRequest::Waiting
        );
        // A shared request behind a queued exclusive waits (no starvation of writers).
        assert_eq!(
            locks.request(txn(4), &key, LockMode::Shared),
            LockRequest::Waiting
        );
        // txn 1 upgrades: it goes ahead of 3 and 4 but still waits for holder 2.
        assert_eq!(
            locks.request(txn(1), &key, LockMode::Exclusive),
            LockRequest::Waiting
        );
        assert_eq!(locks.waits_for(txn(1), &key), vec![txn(2)]);
        assert_eq!(locks.waits_for(txn(3), &key), vec![txn(1), txn(2)]);
        let grants = locks.release(txn(2), [key.clone()]);
        assert_eq!(
            grants,
            vec![Grant {
                txn: txn(1),
                key: key.clone(),
                mode: LockMode::Exclusive
            }]
        );
        let grants = locks.release(txn(1), [key.clone()]);
        assert_eq!(
            grants.iter().map(|grant| grant.txn).collect::<Vec<_>>(),
            vec![txn(3)]
        );
        let grants = locks.release(txn(3), [key.clone()]);
        assert_eq!(
            grants.iter().map(|grant| grant.txn).collect::<Vec<_>>(),
            vec![txn(4)]
        );
    }

    #[test]
    fn two_upgraders_wait_for_each_other() {
        let mut locks = LockTable::default();
        let key = Key::new("k");
        locks.request(txn(1), &key, LockMode::Shared);
        locks.request(txn(2), &key, LockMode::Shared);
        assert_eq!(
            locks.request(txn(1), &key, LockMode::Exclusive),
            LockRequest::Waiting
        );
        assert_eq!(
            locks.request(txn(2), &key, LockMode::Exclusive),
            LockRequest::Waiting
        );
        assert!(locks.waits_for(txn(1), &key).contains(&txn(2)));
        assert!(locks.waits_for(txn(2), &key).contains(&txn(1)));
    }

    #[test]
    fn a_full_queue_refuses() {
        let mut locks = LockTable::new(1);
        let key = Key::new("k");
        locks.request(txn(1), &key, LockMode::Exclusive);
        assert_eq!(
            locks.request(txn(2), &key, LockMode::Exclusive),
            LockRequest::Waiting
        );
        assert_eq!(
            locks.request(txn(3), &key, LockMode::Exclusive),
            LockRequest::QueueFull
        );
    }

    proptest! {
        /// Whatever the sequence of requests, releases and cancels: an exclusive holder is
        /// alone, a waiter always waits for someone (no lost wake-up), and every queued
        /// request is eventually granted once everyone else releases.
        #[test]
        fn lock_table_stays_consistent(steps in proptest::collection::vec((0u64..5, 0u8..3, 0u8..4), 1..200)) {
            let mut locks = LockTable::default();
            for (who, key_index, action) in steps {
                let key = Key::new(format!("k{key_index}"));
                match action {
                    0 => { locks.request(txn(who), &key, LockMode::Shared); }
                    1 => { locks.request(txn(who), &key, LockMode::Exclusive); }
                    2 => { locks.release(txn(who), [key.clone()]); }
                    _ => { locks.cancel(txn(who), &key); }
                }
                for key_index in 0u8..3 {
                    let key = Key::new(format!("k{key_index}"));
                    let holders = locks.holders(&key).cloned().unwrap_or_default();
                    if holders.values().any(|mode| *mode == LockMode::Exclusive) {
                        prop_assert_eq!(holders.len(), 1);
                    }
                    for (waiter, _) in locks.waiters(&key) {
                        prop_assert!(!locks.waits_for(waiter, &key).is_empty(), "{:?} waits for no one", waiter);
                    }
                }
            }
            // Drain: releasing everyone in turn lets every waiter through.
            for round in 0..20 {
                for who in 0u64..5 {
                    for key_index in 0u8..3 {
                        let key = Key::new(format!("k{key_index}"));
                        if locks.held(txn(who), &key).is_some() && round % 2 == 0 {
                            locks.release(txn(who), [key]);
                        }
                    }
                }
            }
            prop_assert!(locks.is_empty(), "locks left: {:?}", locks);
        }
    }
}
