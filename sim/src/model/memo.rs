//! A per-thread cache of actor steps.
//!
//! An actor's step depends only on its own state and its input, and the same (state,
//! input) pair recurs in a great many system states (the other actors and the network
//! differ). Running the production node once per distinct pair instead of once per system
//! state is the checker's main speed-up. Steps are deterministic (no clock, seeded PRNG),
//! so a cached result is exactly what running the step again would give.

use super::actors::{ActorState, Cached, Disk, Frame, ModelActor, ModelTimer, Workload};
use stateright::actor::{model_timeout, Command, Id, Out};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most cached steps per thread; the cache is emptied when it is full (a bound, not a
/// correctness matter: a miss only recomputes).
const STEPS_CACHED_MAX: usize = 1 << 20;

/// What an actor reacts to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StepInput {
    /// A restart from the disk (state is not part of the key: it was lost).
    Restart(Cached<Disk>),
    /// A message from another actor.
    Deliver {
        /// The sender.
        from: Id,
        /// The frame.
        frame: Frame,
    },
    /// The actor's timer fired.
    Timeout,
    /// The actor's random choice was made.
    Random(Workload),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StepKey {
    model: u64,
    actor: usize,
    state: Option<ActorState>,
    input: StepInput,
}

/// A command of a step, in a form that can be kept and replayed.
#[derive(Clone, Debug)]
enum Effect {
    Send(Id, Frame),
    SetTimer,
    CancelTimer,
    Save(Cached<Disk>),
    Choose(String, Vec<Workload>),
}

#[derive(Clone, Debug)]
struct StepResult {
    next: Option<ActorState>,
    effects: Vec<Effect>,
}

thread_local! {
    static STEPS: RefCell<HashMap<StepKey, StepResult>> = RefCell::new(HashMap::new());
}

/// A fresh identity for a model, so that cached steps of two models never mix.
pub fn next_model_identity() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The step of actor `actor` in `state` on `input`: from the cache, or computed by
/// `compute` (which writes its commands into the `Out` it is given) and cached.
pub fn memoized(
    model: u64,
    actor: Id,
    state: Option<&ActorState>,
    input: StepInput,
    o: &mut Out<ModelActor>,
    compute: impl FnOnce(&mut Out<ModelActor>) -> Option<ActorState>,
) -> Option<ActorState> {
    let key = StepKey {
        model,
        actor: usize::from(actor),
        state: state.cloned(),
        input,
    };
    let cached = STEPS.with(|steps| steps.borrow().get(&key).cloned());
    if let Some(result) = cached {
        replay(&result.effects, o);
        return result.next;
    }
    let mut out = Out::new();
    let next = compute(&mut out);
    let result = StepResult {
        next: next.clone(),
        effects: out.iter().map(effect_of).collect(),
    };
    o.append(&mut out);
    STEPS.with(|steps| {
        let mut steps = steps.borrow_mut();
        if steps.len() >= STEPS_CACHED_MAX {
            steps.clear();
        }
        steps.insert(key, result);
    });
    next
}

fn effect_of(command: &Command<Frame, ModelTimer, Workload, Cached<Disk>>) -> Effect {
    match command {
        Command::Send(destination, frame) => Effect::Send(*destination, frame.clone()),
        Command::SetTimer(..) => Effect::SetTimer,
        Command::CancelTimer(_) => Effect::CancelTimer,
        Command::Save(disk) => Effect::Save(disk.clone()),
        Command::ChooseRandom(key, choices) => Effect::Choose(key.clone(), choices.clone()),
    }
}

fn replay(effects: &[Effect], o: &mut Out<ModelActor>) {
    for effect in effects {
        match effect {
            Effect::Send(destination, frame) => o.send(*destination, frame.clone()),
            Effect::SetTimer => o.set_timer(ModelTimer::Deadline, model_timeout()),
            Effect::CancelTimer => o.cancel_timer(ModelTimer::Deadline),
            Effect::Save(disk) => o.save(disk.clone()),
            Effect::Choose(key, choices) => o.choose_random(key.clone(), choices.clone()),
        }
    }
}
