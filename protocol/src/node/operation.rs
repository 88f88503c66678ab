//! The one interpreter of a transaction's operations at an RM: a pure function of the
//! committed data and the transaction's own pending writes. A one-shot Prepare runs its
//! operations through it in order, as an interactive execution does one at a time (a
//! one-shot transaction is an interactive one with an empty execution phase).

use crate::message::{AbortReason, Operation, ReadResult};
use crate::store::Store;
use crate::types::{Key, Value, Version};
use std::collections::BTreeMap;

/// Writes a transaction has made here but not committed: a key's new value, or `None`
/// for a delete.
pub(super) type PendingWrites = BTreeMap<Key, Option<Value>>;

/// Applies one operation against `store` plus `writes` (the transaction's own earlier
/// writes, which it reads back): a write, update or delete goes into `writes`, a read
/// returns what the transaction sees with the committed version. A failed operation
/// (update of a missing key, read of an unexpected version) changes nothing.
pub(super) fn apply_operation(
    store: &Store,
    writes: &mut PendingWrites,
    operation: &Operation,
) -> Result<Option<ReadResult>, AbortReason> {
    match operation {
        Operation::Write { key, value } => {
            writes.insert(key.clone(), Some(value.clone()));
            Ok(None)
        }
        Operation::Update { key, value } => {
            let exists = match writes.get(key) {
                Some(pending) => pending.is_some(),
                None => store.get(key).0.is_some(),
            };
            if !exists {
                return Err(AbortReason::UpdateOfMissingKey { key: key.clone() });
            }
            writes.insert(key.clone(), Some(value.clone()));
            Ok(None)
        }
        Operation::Delete { key } => {
            writes.insert(key.clone(), None);
            Ok(None)
        }
        Operation::Read { key, expected } => read(store, writes, key, *expected).map(Some),
        Operation::ReadForUpdate { key } => read(store, writes, key, None).map(Some),
        // The built-in store serves no service: a call here is misrouted or misconfigured.
        Operation::Call { target, .. } => Err(AbortReason::NoService {
            target: target.clone(),
        }),
    }
}

/// What the transaction sees of `key` (its own pending write, else the committed value)
/// with the committed version; with `expected`, a different committed version fails.
fn read(
    store: &Store,
    writes: &PendingWrites,
    key: &Key,
    expected: Option<Version>,
) -> Result<ReadResult, AbortReason> {
    let (committed, version) = store.get(key);
    if let Some(expected) = expected {
        if expected != version {
            return Err(AbortReason::VersionMismatch {
                key: key.clone(),
                expected: expected.0,
                actual: version.0,
            });
        }
    }
    let value = match writes.get(key) {
        Some(pending) => pending.clone(),
        None => committed.cloned(),
    };
    Ok(ReadResult {
        key: key.clone(),
        value,
        version,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{apply_operation, PendingWrites};
    use crate::message::{AbortReason, Operation};
    use crate::store::Store;
    use crate::types::{Key, Value, Version};

    fn committed(key: &str, value: &str) -> Store {
        let mut store = Store::default();
        store.apply(&[(Key::new(key), Some(Value::new(value.as_bytes().to_vec())))]);
        store
    }

    fn read(key: &str) -> Operation {
        Operation::Read {
            key: Key::new(key),
            expected: None,
        }
    }

    #[test]
    fn a_read_sees_the_transactions_own_earlier_write_with_the_committed_version() {
        let store = committed("a", "old");
        let mut writes = PendingWrites::new();
        let write = Operation::Write {
            key: Key::new("a"),
            value: Value::new(b"new".to_vec()),
        };
        assert_eq!(apply_operation(&store, &mut writes, &write), Ok(None));
        let result = apply_operation(&store, &mut writes, &read("a"))
            .unwrap()
            .unwrap();
        assert_eq!(result.value, Some(Value::new(b"new".to_vec())));
        assert_eq!(result.version, store.get(&Key::new("a")).1);
    }

    #[test]
    fn an_update_of_a_key_deleted_earlier_fails_and_changes_nothing() {
        let store = committed("a", "old");
        let mut writes = PendingWrites::new();
        let delete = Operation::Delete { key: Key::new("a") };
        assert_eq!(apply_operation(&store, &mut writes, &delete), Ok(None));
        let update = Operation::Update {
            key: Key::new("a"),
            value: Value::new(b"new".to_vec()),
        };
        let result = apply_operation(&store, &mut writes, &update);
        let expected = AbortReason::UpdateOfMissingKey { key: Key::new("a") };
        assert_eq!(result, Err(expected));
        assert_eq!(writes.get(&Key::new("a")), Some(&None));
    }

    #[test]
    fn a_read_of_an_unexpected_version_fails() {
        let store = committed("a", "old");
        let mut writes = PendingWrites::new();
        let stale = Operation::Read {
            key: Key::new("a"),
            expected: Some(Version(0)),
        };
        let result = apply_operation(&store, &mut writes, &stale);
        assert!(matches!(result, Err(AbortReason::VersionMismatch { .. })));
    }
}
