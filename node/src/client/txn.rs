//! The transaction handles a [`Client`] gives out: [`Txn`] (one-shot: operations buffered
//! and sent with the prepares) and [`InteractiveTxn`] (each operation runs at its owner as
//! it is issued, then commit).

use super::{committed_or_error, Client, Command, CommitError, Committed};
use dtx_protocol::{Key, Operation, ReadResult, TxnId, Value, Version};
use tokio::sync::oneshot;

/// A transaction being built. Operations run in order at their keys' owners when it
/// commits (one-shot mode: interactive execution comes with waiting locks).
#[derive(Debug)]
pub struct Txn {
    pub(super) client: Client,
    pub(super) operations: Vec<Operation>,
}

impl Txn {
    /// Upserts `key`.
    pub fn write(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Txn {
        self.operations.push(Operation::Write {
            key: Key::new(key),
            value: Value::new(value),
        });
        self
    }

    /// Sets `key`, which must exist (else the transaction aborts).
    pub fn update(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Txn {
        self.operations.push(Operation::Update {
            key: Key::new(key),
            value: Value::new(value),
        });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<String>) -> &mut Txn {
        self.operations
            .push(Operation::Delete { key: Key::new(key) });
        self
    }

    /// Reads `key` (value and version, in [`Committed::reads`]).
    pub fn read(&mut self, key: impl Into<String>) -> &mut Txn {
        self.operations.push(Operation::Read {
            key: Key::new(key),
            expected: None,
        });
        self
    }

    /// Reads `key` under an exclusive lock (SQL's `SELECT ... FOR UPDATE`): for a read the
    /// transaction writes back. Needs write permission on the key.
    pub fn read_for_update(&mut self, key: impl Into<String>) -> &mut Txn {
        self.operations
            .push(Operation::ReadForUpdate { key: Key::new(key) });
        self
    }

    /// Reads `key` and aborts unless its version is still `expected` (optimistic
    /// read-modify-write).
    pub fn read_expecting(&mut self, key: impl Into<String>, expected: Version) -> &mut Txn {
        self.operations.push(Operation::Read {
            key: Key::new(key),
            expected: Some(expected),
        });
        self
    }

    /// Asks the service owning `target` (its namespace, the part before the first `/`) to
    /// do `action` with `args`, as part of this transaction: the service prepares it with
    /// the transaction's other operations and commits or rolls it back with them. A
    /// refusal aborts the transaction with the service's reason
    /// ([`dtx_protocol::AbortReason::ServiceRefused`]).
    pub fn call(
        &mut self,
        target: impl Into<String>,
        action: impl Into<String>,
        args: &serde_json::Value,
    ) -> &mut Txn {
        self.operations.push(call(target, action, args));
        self
    }

    /// Adds a prepared operation.
    pub fn push(&mut self, operation: Operation) -> &mut Txn {
        self.operations.push(operation);
        self
    }

    /// Commits: Ok once F+1 acceptors accepted every participant's Prepared vote.
    pub async fn commit(self) -> Result<Committed, CommitError> {
        self.client.run(self.operations).await
    }
}

/// A call operation: `action` with `args` (sent as JSON text) at the service owning
/// `target`. A service's node executes nothing before prepare, so in an
/// [`InteractiveTxn`] calls go with the commit, in
/// [`commit_with`](InteractiveTxn::commit_with): `txn.commit_with(vec![call(...)])`.
pub fn call(
    target: impl Into<String>,
    action: impl Into<String>,
    args: &serde_json::Value,
) -> Operation {
    Operation::Call {
        target: Key::new(target),
        action: action.into(),
        args: Value::new(args.to_string()),
    }
}

/// An interactive transaction in its execution phase. Dropping it without `commit` or
/// `abort` aborts it.
#[derive(Debug)]
pub struct InteractiveTxn {
    pub(super) client: Client,
    pub(super) txn: TxnId,
    pub(super) open: bool,
}

impl InteractiveTxn {
    /// The transaction's id.
    pub fn id(&self) -> TxnId {
        self.txn
    }

    /// Hands one operation to the event loop; the receiver yields its result.
    async fn submit(
        &self,
        operation: Operation,
    ) -> Result<oneshot::Receiver<Result<Option<ReadResult>, CommitError>>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.client
            .commands
            .send(Command::Execute {
                txn: self.txn,
                operation,
                reply,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        Ok(answer)
    }

    /// Runs one operation at its key's owner and waits for it (a read returns its
    /// result). A failure (lock wait timeout, deadlock victim, bad operation) aborts the
    /// whole transaction and is returned as [`CommitError::Aborted`].
    pub async fn execute(
        &mut self,
        operation: Operation,
    ) -> Result<Option<ReadResult>, CommitError> {
        let answer = self.submit(operation).await?;
        let result = answer.await.map_err(|_| CommitError::Stopped)?;
        if matches!(result, Err(CommitError::Aborted { .. })) {
            self.open = false;
        }
        result
    }

    /// Runs several operations at once, each at its key's owner, and waits for all of
    /// them: operations on different nodes proceed in parallel (one round trip instead of
    /// one per operation); at most one operation per node may be outstanding, so keys
    /// must belong to different nodes. Results are in the order given.
    pub async fn execute_many(
        &mut self,
        operations: Vec<Operation>,
    ) -> Result<Vec<Option<ReadResult>>, CommitError> {
        let mut answers = Vec::with_capacity(operations.len());
        for operation in operations {
            answers.push(self.submit(operation).await?);
        }
        let mut results = Vec::with_capacity(answers.len());
        let mut failure = None;
        for answer in answers {
            match answer.await.map_err(|_| CommitError::Stopped)? {
                Ok(read) => results.push(read),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => {
                if matches!(error, CommitError::Aborted { .. }) {
                    self.open = false;
                }
                Err(error)
            }
            None => Ok(results),
        }
    }

    /// Reads `key`: its committed value (or this transaction's own write) and version.
    pub async fn read(&mut self, key: impl Into<String>) -> Result<ReadResult, CommitError> {
        let key = Key::new(key);
        self.read_with(Operation::Read {
            key,
            expected: None,
        })
        .await
    }

    /// Reads `key` like [`InteractiveTxn::read`] but under an exclusive lock (SQL's
    /// `SELECT ... FOR UPDATE`), waiting for other holders as any lock does: for a value
    /// this transaction will write back. Two read-modify-writes of one key under shared
    /// locks can only both abort at commit; under this one the second waits for the first.
    pub async fn read_for_update(
        &mut self,
        key: impl Into<String>,
    ) -> Result<ReadResult, CommitError> {
        self.read_with(Operation::ReadForUpdate { key: Key::new(key) })
            .await
    }

    async fn read_with(&mut self, operation: Operation) -> Result<ReadResult, CommitError> {
        let key = operation.key().clone();
        let read = self.execute(operation).await?;
        Ok(read.unwrap_or(ReadResult {
            key,
            value: None,
            version: Version(0),
        }))
    }

    /// Upserts `key` (buffered at the owner as an intent until commit).
    pub async fn write(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), CommitError> {
        let operation = Operation::Write {
            key: Key::new(key),
            value: Value::new(value),
        };
        self.execute(operation).await.map(|_| ())
    }

    /// Commits: Paxos Commit over every node that executed an operation.
    pub async fn commit(self) -> Result<Committed, CommitError> {
        self.commit_with(Vec::new()).await
    }

    /// Adds `writes` and commits, in one round: each write travels in its owner's
    /// prepare instead of being executed first (Spanner-style buffered writes; one round
    /// trip fewer). A write whose lock another transaction holds at that moment aborts
    /// the transaction instead of waiting. Only writes (`Write`, `Update`, `Delete`) and
    /// calls ([`call`]) can be buffered; calls can only be buffered (a service's node
    /// refuses interactive operations with `AbortReason::NotInteractive`).
    pub async fn commit_with(mut self, writes: Vec<Operation>) -> Result<Committed, CommitError> {
        self.open = false;
        let (reply, answer) = oneshot::channel();
        self.client
            .commands
            .send(Command::Commit {
                txn: self.txn,
                writes,
                reply,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let result = answer.await.map_err(|_| CommitError::Stopped)??;
        committed_or_error(self.txn, result)
    }

    /// Abandons the transaction: its owners release its locks and drop its intents.
    pub async fn abort(mut self) -> Result<(), CommitError> {
        self.open = false;
        self.client
            .commands
            .send(Command::Abort { txn: self.txn })
            .await
            .map_err(|_| CommitError::Stopped)
    }
}

impl Drop for InteractiveTxn {
    fn drop(&mut self) {
        if self.open {
            // Best effort: if the queue is full the data nodes time the execution out.
            let _ = self
                .client
                .commands
                .try_send(Command::Abort { txn: self.txn });
        }
    }
}
