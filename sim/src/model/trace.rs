//! Counterexample traces a person can read: one line per step, in the paper's words, and
//! below it what changed at the actors the step touched.

use super::actors::{describe_acceptor, ActorState, ClientState, Frame, NodeState, Workload};
use super::config::{model_txn, node_name, ModelConfig};
use super::system::{CommitModel, SystemAction, SystemState};
use dtx_protocol::{Message, Operation, Record};
use stateright::actor::{ActorModelAction, Envelope, Id};
use stateright::{Expectation, Model, Path, Property};
use std::fmt::Write as _;

/// Renders a path of the model as numbered steps.
pub fn render(model: &CommitModel, path: &Path<SystemState, SystemAction>) -> String {
    let config = model.config();
    let steps = path.clone().into_vec();
    let mut text = String::new();
    if let Some((initial, _)) = steps.first() {
        let _ = writeln!(text, "   0. initial state");
        for (index, actor) in initial.actor_states.iter().enumerate() {
            let _ = writeln!(text, "        {}", describe_actor(config, index, actor));
        }
    }
    for (number, window) in steps.windows(2).enumerate() {
        let (before, action) = &window[0];
        let (after, _) = &window[1];
        let Some(action) = action else {
            continue;
        };
        let _ = writeln!(
            text,
            "{:>4}. {}",
            number + 1,
            describe_action(config, action)
        );
        for index in 0..after.actor_states.len() {
            let changed = before.actor_states.get(index) != after.actor_states.get(index)
                || before.crashed.get(index) != after.crashed.get(index);
            if changed {
                let actor = &after.actor_states[index];
                let _ = writeln!(text, "        {}", describe_actor(config, index, actor));
            }
        }
    }
    text
}

/// Shortens a discovery by dropping steps it does not need (greedy delta debugging):
/// stateright's search keeps the *last* state it saw for a property, not the first, and a
/// counterexample is easier to read without unrelated steps. Dropping a step also drops
/// the later steps it enabled (say, the delivery of a message it sent).
pub fn shorten(
    model: &CommitModel,
    property: &Property<CommitModel>,
    path: &Path<SystemState, SystemAction>,
) -> Path<SystemState, SystemAction> {
    let reaches = |state: &SystemState| {
        let holds = (property.condition)(model, state);
        match property.expectation {
            Expectation::Sometimes => holds,
            Expectation::Always | Expectation::Eventually => !holds,
        }
    };
    let mut actions = path.clone().into_actions();
    match replay(model, &actions) {
        Some((applied, last)) if reaches(&last) => actions = applied,
        _ => return path.clone(),
    }
    let mut index = 0;
    while index < actions.len() {
        let mut candidate = actions.clone();
        candidate.remove(index);
        match replay(model, &candidate) {
            Some((applied, last)) if reaches(&last) => actions = applied,
            _ => index += 1,
        }
    }
    let shortened = model
        .init_states()
        .into_iter()
        .next()
        .and_then(|initial| Path::from_actions(model, initial, actions.iter()));
    shortened.unwrap_or_else(|| path.clone())
}

/// Applies the actions that are enabled, change the state and stay within the model's
/// bounds, skipping the others; returns those applied and the state they lead to.
fn replay(
    model: &CommitModel,
    actions: &[SystemAction],
) -> Option<(Vec<SystemAction>, SystemState)> {
    let mut state = model.init_states().into_iter().next()?;
    let mut applied = Vec::new();
    let mut enabled = Vec::new();
    for action in actions {
        enabled.clear();
        model.actions(&state, &mut enabled);
        if !enabled.contains(action) {
            continue;
        }
        let Some(next) = model.next_state(&state, action.clone()) else {
            continue;
        };
        if next == state || !model.within_boundary(&next) {
            continue;
        }
        state = next;
        applied.push(action.clone());
    }
    Some((applied, state))
}

/// The number of steps of a path.
pub fn path_length(path: &Path<SystemState, SystemAction>) -> usize {
    path.clone().into_actions().len()
}

/// One step in words.
pub fn describe_action(config: &ModelConfig, action: &SystemAction) -> String {
    let name = |id: &Id| node_name(config.node_of(*id));
    match action {
        ActorModelAction::Deliver { src, dst, msg } => {
            format!("{} -> {}: {}", name(src), name(dst), describe_frame(msg))
        }
        ActorModelAction::Drop(Envelope { src, dst, msg }) => format!(
            "network loses {} -> {}: {}",
            name(src),
            name(dst),
            describe_frame(msg)
        ),
        ActorModelAction::Timeout(id, _) => {
            if config.node_of(*id) == super::config::CLIENT_ID {
                "client retry timeout fires".to_string()
            } else {
                format!("{} recovery timeout fires", name(id))
            }
        }
        ActorModelAction::Crash(id) => format!("{} crashes (volatile state lost)", name(id)),
        ActorModelAction::Recover(id) => {
            format!("{} restarts: Node::recover from its log", name(id))
        }
        ActorModelAction::SelectRandom { random, .. } => match random {
            Workload::EveryRmPrepares => "client chooses a write per RM".to_string(),
            Workload::ResourceAnswers => "the resource answers its oldest request".to_string(),
            Workload::ResourceRefuses => "the resource refuses a prepare".to_string(),
            Workload::LastRmAborts => {
                "client chooses an update of a missing key for the last RM".to_string()
            }
        },
    }
}

/// The messages of one frame.
pub fn describe_frame(frame: &Frame) -> String {
    let parts: Vec<String> = frame.0.iter().map(describe_message).collect();
    parts.join(" + ")
}

/// One message, without the descriptor every message repeats.
pub fn describe_message(message: &Message) -> String {
    let rm = |node: &dtx_protocol::NodeId| node_name(*node);
    match message {
        Message::Prepare { operations, .. } => {
            let operations: Vec<String> = operations.iter().map(describe_operation).collect();
            format!("Prepare[{}]", operations.join(", "))
        }
        Message::VoteNotice { vote, reason, .. } => match reason {
            Some(reason) => format!("VoteNotice({vote:?}: {reason})"),
            None => format!("VoteNotice({vote:?})"),
        },
        Message::Phase2a {
            rm: instance,
            ballot,
            value,
            ..
        } => format!("Phase2a(instance {}, {ballot}, {value:?})", rm(instance)),
        Message::Phase2b {
            rm: instance,
            ballot,
            value,
            ..
        } => format!("Phase2b(instance {}, {ballot}, {value:?})", rm(instance)),
        Message::Phase1a { ballot, .. } => format!("Phase1a({ballot})"),
        Message::Phase1b {
            ballot, reports, ..
        } => {
            let reports: Vec<String> = reports
                .iter()
                .map(
                    |report| match (report.accepted_ballot, report.accepted_value) {
                        (Some(accepted), Some(value)) => {
                            format!("{}: {accepted} {value:?}", rm(&report.rm))
                        }
                        _ => format!("{}: none", rm(&report.rm)),
                    },
                )
                .collect();
            format!("Phase1b({ballot}; {})", reports.join(", "))
        }
        Message::Reject { promised, .. } => format!("Reject(promised {promised})"),
        Message::Decision { outcome, .. } => format!("Decision({outcome})"),
        Message::Resolve { .. } => "Resolve".to_string(),
        // Interactive execution, deadlock probes and gossip: not part of the checked
        // one-shot transaction.
        other => other.kind().to_string(),
    }
}

fn describe_operation(operation: &Operation) -> String {
    match operation {
        Operation::Write { key, .. } => format!("write {key}"),
        Operation::Update { key, .. } => format!("update {key}"),
        Operation::Delete { key } => format!("delete {key}"),
        Operation::Read { key, .. } => format!("read {key}"),
        Operation::ReadForUpdate { key } => format!("read {key} for update"),
        Operation::Call { target, action, .. } => format!("call {action} at {target}"),
    }
}

/// One actor's state in one line.
fn describe_actor(config: &ModelConfig, index: usize, actor: &ActorState) -> String {
    let name = node_name(config.node_of(Id::from(index)));
    match actor {
        ActorState::Node(node) => format!("{name}: {}", describe_node(config, node)),
        ActorState::Client(client) => format!("{name}: {}", describe_client(client)),
        ActorState::Down => format!("{name}: down (volatile state lost, disk kept)"),
    }
}

fn describe_node(config: &ModelConfig, state: &NodeState) -> String {
    let txn = model_txn();
    let mut parts = Vec::new();
    match state.node.known_outcome(txn) {
        Some(outcome) => parts.push(format!("decided {outcome}")),
        None => parts.push("undecided".to_string()),
    }
    let vote = state.disk.records.iter().find_map(|record| match record {
        Record::Vote { vote, .. } => Some(*vote),
        _ => None,
    });
    if let Some(vote) = vote {
        parts.push(format!("voted {vote:?}"));
    }
    for rm in config.participants() {
        if let Some(acceptor) = state.node.acceptor_state(txn, rm) {
            parts.push(format!(
                "acceptor[{}] {}",
                node_name(rm),
                describe_acceptor(&acceptor)
            ));
        }
    }
    if state.disk.highest_round > 0 {
        parts.push(format!("led round {}", state.disk.highest_round));
    }
    parts.push(format!("log {} records", state.disk.records.len()));
    if state.disk.restarts > 0 {
        parts.push(format!("restarts {}", state.disk.restarts));
    }
    for violation in &state.disk.observed.violations {
        parts.push(format!("VIOLATION {violation:?}"));
    }
    parts.join(", ")
}

fn describe_client(state: &ClientState) -> String {
    let mut parts = Vec::new();
    match state.result {
        Some(result) => parts.push(format!("finished {result:?}")),
        None if state.workload.is_some() => parts.push("waiting for the outcome".to_string()),
        None => parts.push("not begun".to_string()),
    }
    if state.retries_left > 0 {
        parts.push(format!("{} retries left", state.retries_left));
    }
    for violation in &state.violations {
        parts.push(format!("VIOLATION {violation:?}"));
    }
    parts.join(", ")
}
