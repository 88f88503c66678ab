//! [`MemoryParticipant`]: a conforming in-memory participant for tests and examples: a
//! stock of counted items (`target` → how many are available), served through two calls:
//!
//! | action | args | at prepare | at commit | at rollback |
//! |---|---|---|---|---|
//! | `reserve` | `{"count": N}` (default 1) | takes N from the stock, or refuses | keeps them taken | puts them back |
//! | `release` | `{"count": N}` (default 1) | nothing | puts N back | nothing |
//!
//! Any other operation is refused. It follows the contract (idempotent by transaction id,
//! rollback of an unknown transaction remembered, `prepared` listing what it holds) but it
//! is **not durable**: everything is lost with the process, so a test that kills processes
//! must use a durable participant ([`super::tcc`]). Switches make it misbehave for tests:
//! [`MemoryParticipant::set_delay`] (slow), [`MemoryParticipant::set_unavailable`]
//! (every call fails) and [`MemoryParticipant::set_refusing`] (every new prepare refused).

use super::{Participant, ParticipantError, PrepareAnswer};
use dtx_protocol::{cut_text, Operation, Outcome, TxnId, REFUSAL_TEXT_MAX_BYTES};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Most transactions held prepared at once; one more is refused.
pub const PREPARED_MAX: usize = 100_000;
/// Most finished (or refused) transactions remembered; past it the oldest is forgotten.
pub const FINISHED_REMEMBERED_MAX: usize = 100_000;

/// One effect of a prepared transaction on the stock.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Taken at prepare: kept at commit, put back at rollback.
    Taken { item: String, count: u64 },
    /// Put back at commit.
    Released { item: String, count: u64 },
}

/// How a transaction ended here.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ended {
    Refused { reason: String },
    Committed,
    RolledBack,
}

#[derive(Debug, Default)]
struct Inventory {
    available: BTreeMap<String, u64>,
    prepared: BTreeMap<TxnId, Vec<Change>>,
    ended: BTreeMap<TxnId, Ended>,
    /// `ended`'s ids, oldest first, for the bound.
    ended_order: VecDeque<TxnId>,
}

impl Inventory {
    fn end(&mut self, txn: TxnId, ended: Ended) {
        if self.ended.insert(txn, ended).is_none() {
            self.ended_order.push_back(txn);
        }
        while self.ended_order.len() > FINISHED_REMEMBERED_MAX {
            if let Some(oldest) = self.ended_order.pop_front() {
                self.ended.remove(&oldest);
            }
        }
    }

    /// Applies the prepare-time effect of `operations`, all or nothing.
    fn take(&mut self, operations: &[Operation]) -> Result<Vec<Change>, String> {
        let mut changes = Vec::new();
        for operation in operations {
            let change = match parse(operation) {
                Ok(change) => change,
                Err(reason) => {
                    self.put_back(&changes);
                    return Err(reason);
                }
            };
            if let Change::Taken { item, count } = &change {
                let available = self.available.entry(item.clone()).or_default();
                if *available < *count {
                    let reason = format!("only {available} of {item} left, {count} asked");
                    self.put_back(&changes);
                    return Err(reason);
                }
                *available -= count;
            }
            changes.push(change);
        }
        Ok(changes)
    }

    fn put_back(&mut self, changes: &[Change]) {
        for change in changes {
            if let Change::Taken { item, count } = change {
                *self.available.entry(item.clone()).or_default() += count;
            }
        }
    }

    fn commit(&mut self, changes: &[Change]) {
        for change in changes {
            if let Change::Released { item, count } = change {
                *self.available.entry(item.clone()).or_default() += count;
            }
        }
    }
}

/// What a call asks of the stock.
fn parse(operation: &Operation) -> Result<Change, String> {
    let Operation::Call {
        target,
        action,
        args,
    } = operation
    else {
        return Err("this participant serves only calls (reserve, release)".to_string());
    };
    let count = if args.0.is_empty() {
        1
    } else {
        let json: serde_json::Value = serde_json::from_slice(&args.0)
            .map_err(|error| format!("args of {action} on {target} are not JSON: {error}"))?;
        match json.get("count") {
            None => 1,
            Some(count) => count
                .as_u64()
                .ok_or_else(|| format!("count of {action} on {target} is not a whole number"))?,
        }
    };
    let item = target.0.clone();
    match action.as_str() {
        "reserve" => Ok(Change::Taken { item, count }),
        "release" => Ok(Change::Released { item, count }),
        other => Err(format!("unknown action {other:?} (reserve, release)")),
    }
}

/// An in-memory, non-durable participant over a stock of counted items (see the module
/// docs), with switches to misbehave.
#[derive(Debug, Default)]
pub struct MemoryParticipant {
    inventory: Mutex<Inventory>,
    delay_ms: AtomicU64,
    unavailable: AtomicBool,
    refusing: Mutex<Option<String>>,
}

impl MemoryParticipant {
    /// An empty stock, behaving well.
    pub fn new() -> MemoryParticipant {
        MemoryParticipant::default()
    }

    /// Sets how many of `item` are available.
    pub fn set_stock(&self, item: &str, count: u64) {
        self.inventory().available.insert(item.to_string(), count);
    }

    /// How many of `item` are available (not taken by a committed or prepared reserve).
    pub fn available(&self, item: &str) -> u64 {
        self.inventory()
            .available
            .get(item)
            .copied()
            .unwrap_or_default()
    }

    /// How many of `item` prepared transactions hold.
    pub fn held(&self, item: &str) -> u64 {
        self.inventory()
            .prepared
            .values()
            .flatten()
            .map(|change| match change {
                Change::Taken { item: taken, count } if taken == item => *count,
                _ => 0,
            })
            .sum()
    }

    /// Every call waits `delay` before answering (slow participant).
    pub fn set_delay(&self, delay: Duration) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    /// While on, every call fails with [`ParticipantError`] (a participant that is down).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// While `Some(reason)`, every prepare of a new transaction is refused with `reason`.
    pub fn set_refusing(&self, reason: Option<String>) {
        *self
            .refusing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }

    /// The inventory; a panic while it was held (only in a test) leaves it usable.
    fn inventory(&self) -> MutexGuard<'_, Inventory> {
        self.inventory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the misbehaviour switches common to every call.
    async fn misbehave(&self) -> Result<(), ParticipantError> {
        let delay_ms = self.delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(ParticipantError::new(
                "memory participant switched unavailable",
            ));
        }
        Ok(())
    }

    fn prepare_now(&self, txn: TxnId, operations: &[Operation]) -> PrepareAnswer {
        let refusing = self
            .refusing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut inventory = self.inventory();
        if inventory.prepared.contains_key(&txn) {
            return PrepareAnswer::Prepared;
        }
        let refused = |reason: String| PrepareAnswer::Refused {
            reason: cut_text(&reason, REFUSAL_TEXT_MAX_BYTES),
        };
        match inventory.ended.get(&txn) {
            Some(Ended::Refused { reason }) => return refused(reason.clone()),
            Some(Ended::Committed) => return refused(format!("{txn} already committed")),
            Some(Ended::RolledBack) => return refused(format!("{txn} already rolled back")),
            None => {}
        }
        let taken = match refusing {
            Some(reason) => Err(reason),
            None if inventory.prepared.len() >= PREPARED_MAX => Err(format!(
                "participant busy: {PREPARED_MAX} transactions prepared"
            )),
            None => inventory.take(operations),
        };
        match taken {
            Ok(changes) => {
                inventory.prepared.insert(txn, changes);
                PrepareAnswer::Prepared
            }
            Err(reason) => {
                let reason = cut_text(&reason, REFUSAL_TEXT_MAX_BYTES);
                inventory.end(
                    txn,
                    Ended::Refused {
                        reason: reason.clone(),
                    },
                );
                PrepareAnswer::Refused { reason }
            }
        }
    }

    fn finish_now(&self, txn: TxnId, outcome: Outcome) -> Result<(), ParticipantError> {
        let mut inventory = self.inventory();
        if let Some(changes) = inventory.prepared.remove(&txn) {
            match outcome {
                Outcome::Commit => inventory.commit(&changes),
                Outcome::Abort => inventory.put_back(&changes),
            }
            let ended = match outcome {
                Outcome::Commit => Ended::Committed,
                Outcome::Abort => Ended::RolledBack,
            };
            inventory.end(txn, ended);
            return Ok(());
        }
        match (inventory.ended.get(&txn), outcome) {
            (Some(Ended::Committed), Outcome::Commit)
            | (Some(Ended::RolledBack), Outcome::Abort) => Ok(()),
            // Forgotten past the bound (a commit follows a Prepared answer).
            (None, Outcome::Commit) => Ok(()),
            // Unknown or refused: nothing held; remembered so a late prepare is refused.
            (None | Some(Ended::Refused { .. }), Outcome::Abort) => {
                inventory.end(txn, Ended::RolledBack);
                Ok(())
            }
            (Some(ended), outcome) => Err(ParticipantError::new(format!(
                "contract broken: {outcome} of {txn}, which ended {ended:?} here"
            ))),
        }
    }
}

impl Participant for MemoryParticipant {
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
        Box::pin(async move {
            self.misbehave().await?;
            Ok(self.prepare_now(txn, operations))
        })
    }

    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async move {
            self.misbehave().await?;
            self.finish_now(txn, outcome)
        })
    }

    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
        Box::pin(async move {
            self.misbehave().await?;
            Ok(self.inventory().prepared.keys().copied().collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participant::journal::tests::txn;
    use dtx_protocol::{Key, Value};

    fn call(action: &str, item: &str, count: u64) -> Operation {
        Operation::Call {
            target: Key::new(item),
            action: action.to_string(),
            args: Value::new(format!(r#"{{"count":{count}}}"#).into_bytes()),
        }
    }

    fn stocked() -> MemoryParticipant {
        let participant = MemoryParticipant::new();
        participant.set_stock("shop/widget", 5);
        participant
    }

    #[tokio::test]
    async fn a_reserve_is_held_at_prepare_kept_at_commit_and_returned_at_rollback() {
        let participant = stocked();
        let reserve = [call("reserve", "shop/widget", 2)];
        assert_eq!(
            participant.prepare(txn(1), &reserve).await,
            Ok(PrepareAnswer::Prepared)
        );
        assert_eq!(
            participant.prepare(txn(2), &reserve).await,
            Ok(PrepareAnswer::Prepared)
        );
        // Repeated: held once.
        assert_eq!(
            participant.prepare(txn(1), &reserve).await,
            Ok(PrepareAnswer::Prepared)
        );
        assert_eq!(participant.available("shop/widget"), 1);
        assert_eq!(participant.held("shop/widget"), 4);
        assert_eq!(participant.prepared().await, Ok(vec![txn(1), txn(2)]));
        participant.finish(txn(1), Outcome::Commit).await.unwrap();
        participant.finish(txn(2), Outcome::Abort).await.unwrap();
        participant.finish(txn(2), Outcome::Abort).await.unwrap();
        assert_eq!(participant.available("shop/widget"), 3);
        assert_eq!(participant.held("shop/widget"), 0);
        let release = [call("release", "shop/widget", 2)];
        participant.prepare(txn(3), &release).await.unwrap();
        assert_eq!(participant.available("shop/widget"), 3);
        participant.finish(txn(3), Outcome::Commit).await.unwrap();
        assert_eq!(participant.available("shop/widget"), 5);
    }

    #[tokio::test]
    async fn a_reserve_past_the_stock_is_refused_and_takes_nothing() {
        let participant = stocked();
        let operations = [
            call("reserve", "shop/widget", 3),
            call("reserve", "shop/widget", 3),
        ];
        let answer = participant.prepare(txn(1), &operations).await.unwrap();
        assert_eq!(
            answer,
            PrepareAnswer::Refused {
                reason: "only 2 of shop/widget left, 3 asked".to_string()
            }
        );
        assert_eq!(participant.available("shop/widget"), 5);
        // The same answer again, even once there would be enough.
        participant.set_stock("shop/widget", 10);
        assert_eq!(participant.prepare(txn(1), &operations).await, Ok(answer));
    }

    #[tokio::test]
    async fn rollback_before_prepare_refuses_the_late_prepare() {
        let participant = stocked();
        participant.finish(txn(1), Outcome::Abort).await.unwrap();
        let answer = participant
            .prepare(txn(1), &[call("reserve", "shop/widget", 1)])
            .await
            .unwrap();
        assert!(
            matches!(answer, PrepareAnswer::Refused { .. }),
            "{answer:?}"
        );
        assert_eq!(participant.available("shop/widget"), 5);
    }

    #[tokio::test]
    async fn the_switches_make_it_unavailable_refusing_and_slow() {
        let participant = stocked();
        let reserve = [call("reserve", "shop/widget", 1)];
        participant.set_unavailable(true);
        assert!(participant.prepare(txn(1), &reserve).await.is_err());
        assert!(participant.finish(txn(1), Outcome::Abort).await.is_err());
        participant.set_unavailable(false);
        participant.set_refusing(Some("closed for inventory".to_string()));
        assert_eq!(
            participant.prepare(txn(2), &reserve).await,
            Ok(PrepareAnswer::Refused {
                reason: "closed for inventory".to_string()
            })
        );
        participant.set_refusing(None);
        participant.set_delay(Duration::from_millis(200));
        let slow = participant.prepare(txn(3), &reserve);
        let answered = tokio::time::timeout(Duration::from_millis(20), slow).await;
        assert!(answered.is_err(), "answered before its delay");
        participant.set_delay(Duration::ZERO);
        assert_eq!(participant.available("shop/widget"), 5);
    }

    #[tokio::test]
    async fn operations_other_than_its_calls_are_refused() {
        let participant = stocked();
        let write = Operation::Write {
            key: Key::new("shop/widget"),
            value: Value::new(b"1".to_vec()),
        };
        for (sequence, operation) in [(1, write), (2, call("steal", "shop/widget", 1))] {
            let answer = participant
                .prepare(txn(sequence), &[operation])
                .await
                .unwrap();
            assert!(
                matches!(answer, PrepareAnswer::Refused { .. }),
                "{answer:?}"
            );
        }
    }
}
