//! The client actor: the production [`Client`] beginning the model's one transaction,
//! with its retry timer and the result it reports.

use super::{keep_timer_armed, send, timer_due, ModelActor, NOW};
use super::{ClientResult, ClientState, Violation, Workload};
use crate::model::config::{model_txn, ModelConfig};
use crate::model::panics::{clip, guarded};
use dtx_protocol::{
    Client, ClientConfig, Envelope, Finished, Input, Key, Operation, TxnResult, Value,
};
use stateright::actor::Out;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The client running the production [`Client`].
#[derive(Clone, Debug)]
pub struct ClientActor {
    pub(super) config: ClientConfig,
    pub(super) model: Arc<ModelConfig>,
    pub(super) model_identity: u64,
}

impl ClientActor {
    /// The client at the start: it begins the transaction, or first chooses its operations
    /// when the model lets an RM vote Aborted.
    pub(super) fn start(&self, o: &mut Out<ModelActor>) -> ClientState {
        let state = ClientState {
            client: Client::new(self.config.clone()),
            workload: None,
            result: None,
            retries_left: self.model.client_retries,
            violations: BTreeSet::new(),
        };
        if self.model.aborting_rm {
            o.choose_random(
                "workload",
                vec![Workload::EveryRmPrepares, Workload::LastRmAborts],
            );
            return state;
        }
        self.begin(state, Workload::EveryRmPrepares, o)
    }

    /// One write per RM, `n{i}/x`; the last RM's is an update of a missing key when the
    /// workload asks it to vote Aborted.
    fn operations(&self, workload: Workload) -> Vec<Operation> {
        let participants = self.model.participants();
        let last = participants.last().copied();
        participants
            .into_iter()
            .map(|rm| {
                let value = Value::new(b"v".to_vec());
                if workload == Workload::LastRmAborts && Some(rm) == last {
                    Operation::Update {
                        key: Key::new(format!("n{}/missing", rm.0)),
                        value,
                    }
                } else {
                    Operation::Write {
                        key: Key::new(format!("n{}/x", rm.0)),
                        value,
                    }
                }
            })
            .collect()
    }

    /// Begins the model's transaction.
    pub(super) fn begin(
        &self,
        state: ClientState,
        workload: Workload,
        o: &mut Out<ModelActor>,
    ) -> ClientState {
        let operations = self.operations(workload);
        let mut next = state.clone();
        next.workload = Some(workload);
        match guarded(|| next.client.begin(NOW, operations)) {
            Ok(Ok(txn)) if txn == model_txn() => {}
            Ok(Ok(txn)) => {
                next.violations.insert(Violation::Assertion(format!(
                    "the client began {txn}, the model expects {}",
                    model_txn()
                )));
            }
            Ok(Err(error)) => {
                next.violations
                    .insert(Violation::Assertion(clip(format!("begin failed: {error}"))));
            }
            Err(message) => {
                next.client = state.client.clone();
                next.violations.insert(Violation::Assertion(clip(message)));
            }
        }
        let sends = drain_client(&mut next);
        self.arm_timer(&state, &next, false, o);
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        next
    }

    /// A retry timeout: spends one retry.
    pub(super) fn timeout(
        &self,
        state: &ClientState,
        o: &mut Out<ModelActor>,
    ) -> Option<ClientState> {
        let mut spent = state.clone();
        spent.retries_left = spent.retries_left.saturating_sub(1);
        self.step(&spent, Input::Timeout, true, o)
    }

    /// Feeds one input to the client and sends what it produced. `None` if nothing changed.
    pub(super) fn step(
        &self,
        state: &ClientState,
        input: Input,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) -> Option<ClientState> {
        let mut next = state.clone();
        if let Err(message) = guarded(|| next.client.handle(NOW, input)) {
            next.client = state.client.clone();
            next.violations.insert(Violation::Assertion(clip(message)));
        }
        let sends = drain_client(&mut next);
        if next == *state && !timer_fired {
            for envelope in sends {
                send(&self.model, envelope, o);
            }
            return None;
        }
        self.arm_timer(state, &next, timer_fired, o);
        for envelope in sends {
            send(&self.model, envelope, o);
        }
        Some(next)
    }

    /// Keeps the client's timer armed while it has a deadline and retries left.
    fn arm_timer(
        &self,
        before: &ClientState,
        after: &ClientState,
        timer_fired: bool,
        o: &mut Out<ModelActor>,
    ) {
        let armed =
            |state: &ClientState| timer_due(state.client.poll_timeout()) && state.retries_left > 0;
        keep_timer_armed(armed(before), armed(after), timer_fired, o);
    }
}

/// Takes the client's queued sends and records its finished event.
fn drain_client(state: &mut ClientState) -> Vec<Envelope> {
    let mut sends = Vec::new();
    while let Some(envelope) = state.client.poll_output() {
        sends.push(envelope);
    }
    while let Some(Finished { result, .. }) = state.client.poll_event() {
        let result = match result {
            TxnResult::Committed { .. } => ClientResult::Committed,
            TxnResult::Aborted { .. } | TxnResult::Refused(_) => ClientResult::Aborted,
            TxnResult::Unknown => ClientResult::Unknown,
        };
        match state.result {
            None => state.result = Some(result),
            Some(first) if first != result => {
                state.violations.insert(Violation::DecisionChanged(format!(
                    "the client reported {first:?} and later {result:?}"
                )));
            }
            Some(_) => {}
        }
    }
    sends
}
