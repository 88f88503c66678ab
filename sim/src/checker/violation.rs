//! What a checker can find: one variant per check, named after the TLA+ invariant or the
//! check it comes from, with the facts that show it. `Display` gives the sentence for people.

use crate::world::Phase;
use dtx_protocol::{AcceptorState, Ballot, Event, Key, NodeId, Outcome, TxnId, Value};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// A broken rule found by the simulator's checkers (or by the workload, or a panic).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// PaxosCommit.tla: an acceptor accepts at most one value per instance and ballot.
    #[error(
        "acceptor {acceptor} accepted two values for instance {rm} of {txn} in ballot {ballot}"
    )]
    OneValuePerBallot {
        /// The acceptor that accepted twice.
        acceptor: NodeId,
        /// The transaction.
        txn: TxnId,
        /// The instance (the RM whose vote it decides).
        rm: NodeId,
        /// The ballot.
        ballot: Ballot,
    },
    /// Paxos agreement (`invariants::one_value_chosen`): one value chosen per instance.
    #[error("instance {rm} of {txn} chose both Prepared and Aborted (latest in ballot {ballot})")]
    OneValueChosen {
        /// The transaction.
        txn: TxnId,
        /// The instance (the RM whose vote it decides).
        rm: NodeId,
        /// The ballot of the latest choice.
        ballot: Ballot,
    },
    /// `invariants::decision_stable`: a decision once taken never changes.
    #[error("{who} changed its decision on {txn} to {outcome}")]
    DecisionStable {
        /// The node or client that changed its mind.
        who: NodeId,
        /// The transaction.
        txn: TxnId,
        /// The new decision.
        outcome: Outcome,
    },
    /// TCommit.tla `TCConsistent`: no node or client committed while another aborted.
    #[error("atomicity violated for {txn}: {}", outcome_view(.outcomes))]
    TcConsistent {
        /// The transaction.
        txn: TxnId,
        /// What each node or client decided.
        outcomes: BTreeMap<NodeId, Outcome>,
    },
    /// `invariants::acceptor_step_monotonic`: what an acceptor revealed before a crash is
    /// still in its state after the restart.
    #[error("acceptor {acceptor} went backwards across a crash on instance {rm} of {txn}: revealed {revealed:?}, recovered {recovered:?}")]
    AcceptorBallotsMonotonic {
        /// The restarted acceptor.
        acceptor: NodeId,
        /// The transaction.
        txn: TxnId,
        /// The instance.
        rm: NodeId,
        /// The most it revealed before the crash.
        revealed: AcceptorState,
        /// What it recovered.
        recovered: AcceptorState,
    },
    /// A node saw two different Phase2a for one instance and ballot (honest peers never
    /// send them).
    #[error("{node} got conflicting Phase2a from {from}")]
    ConflictingPhase2a {
        /// The receiving node.
        node: NodeId,
        /// The sender.
        from: NodeId,
    },
    /// An event that honest logs and a few thousand ballots never produce (recovery rounds
    /// exhausted, a replay anomaly).
    #[error("{node}: {event:?}")]
    UnexpectedEvent {
        /// The node that reported it.
        node: NodeId,
        /// The event.
        event: Box<Event>,
    },
    /// Deadlock soundness: a victim must be on a real cycle of the global wait-for graph.
    #[error(
        "phantom deadlock: {victim} aborted but is on no wait-for cycle (cycle claimed: {cycle:?})"
    )]
    DeadlockSoundness {
        /// The aborted transaction.
        victim: TxnId,
        /// The cycle the detector claimed, as transaction names.
        cycle: Vec<String>,
    },
    /// The run stopped early: nothing was left to happen before the run was over.
    #[error("event queue ran dry in phase {phase:?}")]
    EventQueueRanDry {
        /// The phase it stopped in.
        phase: Phase,
    },
    /// The run stopped early: it took more events than any run may.
    #[error("event budget of {events_max} exhausted in phase {phase:?}")]
    EventBudgetExhausted {
        /// The budget.
        events_max: u64,
        /// The phase it stopped in.
        phase: Phase,
    },
    /// Recovering from a checkpoint gives the same node as recovering from the log.
    #[error("n{node_number} recovered from its checkpoint differs from n{node_number} recovered from its log")]
    CheckpointEquivalence {
        /// The node's number (1-based).
        node_number: usize,
    },
    /// Liveness: once every fault healed, every transaction is decided.
    #[error("{count} transactions undecided after healing")]
    UndecidedAfterHeal {
        /// Transactions still undecided somewhere.
        count: u64,
    },
    /// Liveness: after the final power cut and restart, every transaction is decided.
    #[error("{count} transactions undecided after the final power cut and recovery")]
    UndecidedAfterFinalRecovery {
        /// Transactions still undecided somewhere.
        count: u64,
    },
    /// Durability of a node's store: the final power cut loses nothing it held.
    #[error("n{node_number} lost or changed data across the final power cut: keys {keys:?}")]
    PowerCutDurability {
        /// The node's number (1-based).
        node_number: usize,
        /// Up to five keys that were lost or changed.
        keys: Vec<Key>,
    },
    /// Durability: a committed transaction's Commit is in every participant's log.
    #[error("durability: {txn} committed but {rm}'s log holds {held:?} after the final power cut and recovery")]
    Durability {
        /// The committed transaction.
        txn: TxnId,
        /// The participant whose log lacks the Commit.
        rm: NodeId,
        /// The outcome its log holds instead.
        held: Option<Outcome>,
    },
    /// TCommit.tla `TCConsistent` over the outcomes in the durable logs.
    #[error("atomicity in the durable logs: {txn} {outcomes:?}")]
    DurableTcConsistent {
        /// The transaction.
        txn: TxnId,
        /// The outcome each participant's log holds.
        outcomes: BTreeMap<NodeId, Outcome>,
    },
    /// Serializability: every read saw a version some committed transaction wrote.
    #[error("{reader} read {key} at version {version} that no committed transaction wrote")]
    ReadUncommittedVersion {
        /// The reading transaction.
        reader: TxnId,
        /// The key.
        key: Key,
        /// The version it read.
        version: u64,
    },
    /// Serializability: the dependency graph over versions is acyclic.
    #[error("serializability: dependency cycle {}", cycle_view(.cycle))]
    Serializability {
        /// The cycle, its first transaction repeated at the end.
        cycle: Vec<TxnId>,
    },
    /// Serializability: a read a client was told holds the value its version holds.
    #[error("client of {txn} read {key} = {value:?} at version {version}, but that version holds {held:?}")]
    ClientReadValue {
        /// The reading transaction.
        txn: TxnId,
        /// The key.
        key: Key,
        /// The value the client was told.
        value: Option<Value>,
        /// The version the client was told.
        version: u64,
        /// What that version holds (`None`: no such version).
        held: Option<Option<Value>>,
    },
    /// Bank conservation: every account still exists at the end.
    #[error("bank account {key} is missing at the end")]
    BankAccountMissing {
        /// The account.
        key: Key,
    },
    /// Bank conservation: the total at the end is the total at the start.
    #[error("bank total is {total} at the end, expected {expected}")]
    BankConservation {
        /// The total found.
        total: i64,
        /// The total expected.
        expected: i64,
    },
    /// Workload: a transfer's read step returned both accounts.
    #[error("transfer read of {from}, {to} missing results")]
    TransferReadIncomplete {
        /// The debited account.
        from: Key,
        /// The credited account.
        to: Key,
    },
    /// Workload: an audit read every account.
    #[error("audit missing a read of {key}")]
    AuditReadMissing {
        /// The account not read.
        key: Key,
    },
    /// Bank conservation as an audit saw it: a committed audit sees the full total.
    #[error("audit saw a bank total of {total}, expected {expected}")]
    AuditTotal {
        /// The total the audit saw.
        total: i64,
        /// The total expected.
        expected: i64,
    },
    /// Workload: every account holds a balance.
    #[error("account {key} holds {value:?}, not a balance")]
    NotABalance {
        /// The account.
        key: Key,
        /// What it holds.
        value: Option<Value>,
    },
    /// Resource consistency: after healing, a service holds the outcome the cluster
    /// decided (committed exactly for the committed transactions).
    #[error("service {node} holds {txn} {held}, but the cluster decided {decided}")]
    ResourceOutcome {
        /// The service's data node.
        node: NodeId,
        /// The transaction.
        txn: TxnId,
        /// What the cluster decided.
        decided: Outcome,
        /// What the service holds for it.
        held: String,
    },
    /// Resource consistency: after healing, nothing stays prepared at a service.
    #[error("service {node} still holds {txn} prepared after healing")]
    ResourceStillPrepared {
        /// The service's data node.
        node: NodeId,
        /// The transaction.
        txn: TxnId,
    },
    /// The service's own invariant: stock never negative, never more held than there was.
    #[error("service {node} item {item}: stock {stock}, held or sold {taken}, counted available {available}")]
    ResourceInventory {
        /// The service's data node.
        node: NodeId,
        /// The item.
        item: Key,
        /// Its initial stock.
        stock: u64,
        /// Units held prepared or sold.
        taken: u64,
        /// What the service counts as available.
        available: i64,
    },
    /// The resource contract: a request a data node never sends (commit of a transaction
    /// the service did not prepare, rollback after commit).
    #[error("service {node} was asked something the contract forbids for {txn}: {what}")]
    ResourceContract {
        /// The service's data node.
        node: NodeId,
        /// The transaction.
        txn: TxnId,
        /// What was asked, in the service's state.
        what: String,
    },
    /// The protocol or the simulator panicked (a broken assertion).
    #[error("panic: {message}")]
    Panic {
        /// The panic's message.
        message: String,
    },
}

impl Violation {
    /// The variant's name, for machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::OneValuePerBallot { .. } => "OneValuePerBallot",
            Violation::OneValueChosen { .. } => "OneValueChosen",
            Violation::DecisionStable { .. } => "DecisionStable",
            Violation::TcConsistent { .. } => "TcConsistent",
            Violation::AcceptorBallotsMonotonic { .. } => "AcceptorBallotsMonotonic",
            Violation::ConflictingPhase2a { .. } => "ConflictingPhase2a",
            Violation::UnexpectedEvent { .. } => "UnexpectedEvent",
            Violation::DeadlockSoundness { .. } => "DeadlockSoundness",
            Violation::EventQueueRanDry { .. } => "EventQueueRanDry",
            Violation::EventBudgetExhausted { .. } => "EventBudgetExhausted",
            Violation::CheckpointEquivalence { .. } => "CheckpointEquivalence",
            Violation::UndecidedAfterHeal { .. } => "UndecidedAfterHeal",
            Violation::UndecidedAfterFinalRecovery { .. } => "UndecidedAfterFinalRecovery",
            Violation::PowerCutDurability { .. } => "PowerCutDurability",
            Violation::Durability { .. } => "Durability",
            Violation::DurableTcConsistent { .. } => "DurableTcConsistent",
            Violation::ReadUncommittedVersion { .. } => "ReadUncommittedVersion",
            Violation::Serializability { .. } => "Serializability",
            Violation::ClientReadValue { .. } => "ClientReadValue",
            Violation::BankAccountMissing { .. } => "BankAccountMissing",
            Violation::BankConservation { .. } => "BankConservation",
            Violation::TransferReadIncomplete { .. } => "TransferReadIncomplete",
            Violation::AuditReadMissing { .. } => "AuditReadMissing",
            Violation::AuditTotal { .. } => "AuditTotal",
            Violation::NotABalance { .. } => "NotABalance",
            Violation::ResourceOutcome { .. } => "ResourceOutcome",
            Violation::ResourceStillPrepared { .. } => "ResourceStillPrepared",
            Violation::ResourceInventory { .. } => "ResourceInventory",
            Violation::ResourceContract { .. } => "ResourceContract",
            Violation::Panic { .. } => "Panic",
        }
    }
}

/// In JSON a violation is `{"kind": <variant>, "text": <the sentence>}`: the text is what
/// the output held before violations were typed, the kind is what a program matches on.
impl Serialize for Violation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Violation", 2)?;
        object.serialize_field("kind", self.kind())?;
        object.serialize_field("text", &self.to_string())?;
        object.end()
    }
}

/// `who=outcome` for each decider, space separated.
fn outcome_view(outcomes: &BTreeMap<NodeId, Outcome>) -> String {
    outcomes
        .iter()
        .map(|(who, outcome)| format!("{who}={outcome}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The transactions of a cycle joined by arrows.
fn cycle_view(cycle: &[TxnId]) -> String {
    cycle
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}
