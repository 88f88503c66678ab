//! An RM's committed data and its row lock table.
//!
//! Committed data lives in an ordered map (rebuilt at restart from the log). Locks are
//! taken at prepare and released at the decision (strict two-phase locking); in this
//! version a conflict does not wait: the RM votes Aborted with the contended key.

use crate::record::LockMode;
use crate::types::{Key, TxnId, Value, Version};
use std::collections::{BTreeMap, BTreeSet};

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
    pub fn apply(&mut self, writes: &[(Key, Option<Value>)]) -> Version {
        self.commit_sequence += 1;
        let version = Version(self.commit_sequence);
        for (key, value) in writes {
            match value {
                Some(value) => {
                    self.rows.insert(
                        key.clone(),
                        Row {
                            value: value.clone(),
                            version,
                        },
                    );
                }
                None => {
                    self.rows.remove(key);
                }
            }
        }
        version
    }

    /// All rows in key order.
    pub fn rows(&self) -> &BTreeMap<Key, Row> {
        &self.rows
    }

    /// Commits applied so far (the last version handed out).
    pub fn commit_sequence(&self) -> u64 {
        self.commit_sequence
    }
}

/// Who holds a key's lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockEntry {
    mode: LockMode,
    holders: BTreeSet<TxnId>,
}

/// Row locks: shared or exclusive, per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockTable {
    locks: BTreeMap<Key, LockEntry>,
}

impl LockTable {
    /// Takes every lock in `wanted` for `txn`, or none of them: `Err` names the first key
    /// held in a conflicting mode by another transaction.
    pub fn try_acquire_all(&mut self, txn: TxnId, wanted: &[(Key, LockMode)]) -> Result<(), Key> {
        for (key, mode) in wanted {
            if let Some(entry) = self.locks.get(key) {
                if !compatible(entry, txn, *mode) {
                    return Err(key.clone());
                }
            }
        }
        for (key, mode) in wanted {
            let entry = self.locks.entry(key.clone()).or_insert(LockEntry {
                mode: *mode,
                holders: BTreeSet::new(),
            });
            entry.mode = entry.mode.max(*mode);
            entry.holders.insert(txn);
        }
        Ok(())
    }

    /// Releases `txn`'s locks on `keys`.
    pub fn release(&mut self, txn: TxnId, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            if let Some(entry) = self.locks.get_mut(&key) {
                entry.holders.remove(&txn);
                if entry.holders.is_empty() {
                    self.locks.remove(&key);
                }
            }
        }
    }

    /// The transactions holding `key`, and the mode.
    pub fn holders(&self, key: &Key) -> Option<(LockMode, &BTreeSet<TxnId>)> {
        self.locks
            .get(key)
            .map(|entry| (entry.mode, &entry.holders))
    }

    /// Keys currently locked.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// True if no key is locked.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

fn compatible(entry: &LockEntry, txn: TxnId, mode: LockMode) -> bool {
    let others = entry.holders.iter().any(|holder| *holder != txn);
    if !others {
        return true;
    }
    entry.mode == LockMode::Shared && mode == LockMode::Shared
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

    proptest! {
        /// Whatever the sequence of acquires and releases, an exclusive lock is never held by
        /// two transactions, and shared holders never coexist with an exclusive holder.
        #[test]
        fn exclusive_means_alone(steps in proptest::collection::vec((0u64..4, 0u8..3, any::<bool>(), any::<bool>()), 1..100)) {
            let mut locks = LockTable::default();
            let mut held: BTreeMap<(u64, u8), LockMode> = BTreeMap::new();
            for (who, key_index, exclusive, release) in steps {
                let key = Key::new(format!("k{key_index}"));
                if release {
                    locks.release(txn(who), [key.clone()]);
                    held.remove(&(who, key_index));
                } else {
                    let mode = if exclusive { LockMode::Exclusive } else { LockMode::Shared };
                    if locks.try_acquire_all(txn(who), &[(key.clone(), mode)]).is_ok() {
                        let entry = held.entry((who, key_index)).or_insert(mode);
                        *entry = (*entry).max(mode);
                    }
                }
                for key_index in 0u8..3 {
                    let holders: Vec<LockMode> = held.iter().filter(|((_, k), _)| *k == key_index).map(|(_, mode)| *mode).collect();
                    if holders.contains(&LockMode::Exclusive) {
                        prop_assert_eq!(holders.len(), 1);
                    }
                }
            }
        }
    }
}
