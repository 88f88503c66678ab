//! Checkpoints: `Node::checkpoint_records` restates a replayed log (committed rows with
//! their versions, the outcome window, the leader round, open votes with their locks and
//! acceptor state), and recovering from it gives the same node as recovering from the
//! whole log. Any prefix of a log is a state a crash can leave, so every property is
//! checked on random prefixes of random histories.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::Rng;
use dtx_protocol::*;
use proptest::prelude::*;
use std::time::Duration;

const NODES: u64 = 3;

fn node_config(index: u64, outcomes_kept_max: usize) -> NodeConfig {
    let mut config = config(index, &cluster(NODES));
    config.limits.outcomes_kept_max = outcomes_kept_max;
    config
}

/// A harness whose nodes keep `outcomes_kept_max` outcomes.
fn harness(outcomes_kept_max: usize) -> Harness {
    let mut harness = Harness::new(NODES);
    harness.nodes = (1..=NODES)
        .map(|index| Node::new(node_config(index, outcomes_kept_max)))
        .collect();
    harness
}

fn random_operation(rng: &mut Rng, keys: u64, sequence: u64) -> Operation {
    let key = Key::new(format!("k{}", rng.below(keys)));
    let value = Value::new(format!("v{sequence}").into_bytes());
    match rng.below(5) {
        0 => Operation::Read {
            key,
            expected: None,
        },
        1 => Operation::Update { key, value },
        2 => Operation::Delete { key },
        _ => Operation::Write { key, value },
    }
}

/// Runs `transactions` random one-shot transactions over `keys` keys, a few at a time
/// (so some collide on locks), with messages to a random node sometimes dropped and time
/// sometimes advanced past the decision timeout (recovery leaders, promises, ballots).
/// Returns each node's log.
fn random_history(seed: u64, transactions: u64, keys: u64, outcomes_kept_max: usize) -> Harness {
    let mut rng = Rng::new(seed);
    let mut harness = harness(outcomes_kept_max);
    let mut sequence = 0;
    while sequence < transactions {
        harness.drop_to.clear();
        if rng.chance(0.15) {
            harness.drop_to.push(NodeId(1 + rng.below(NODES)));
        }
        if rng.chance(0.05) {
            harness.drop_to.push(CLIENT);
        }
        for _ in 0..1 + rng.below(3) {
            sequence += 1;
            let operations = (0..1 + rng.below(3))
                .map(|_| random_operation(&mut rng, keys, sequence))
                .collect();
            harness.begin(operations);
        }
        harness.settle();
        if rng.chance(0.2) {
            harness.drop_to.clear();
            harness.advance(Duration::from_millis(rng.between(1, 400)));
        }
    }
    harness
}

fn recover(index: u64, outcomes_kept_max: usize, records: Vec<Record>) -> Node {
    Node::recover(
        node_config(index, outcomes_kept_max),
        Time(5_000_000),
        records,
    )
}

fn encoded_bytes(records: &[Record]) -> usize {
    let mut bytes = Vec::new();
    for record in records {
        encode_record(record, &mut bytes).unwrap();
    }
    bytes.len()
}

/// The parts of a node a reader of a failed comparison needs, before the whole-node check.
fn assert_same_node(expected: &Node, actual: &Node, context: &str) {
    assert_eq!(expected.store(), actual.store(), "{context}: store");
    let expected_open: Vec<_> = expected.undecided().cloned().collect();
    let actual_open: Vec<_> = actual.undecided().cloned().collect();
    assert_eq!(
        expected_open, actual_open,
        "{context}: undecided transactions"
    );
    let expected_in_doubt: Vec<_> = expected.in_doubt().collect();
    let actual_in_doubt: Vec<_> = actual.in_doubt().collect();
    assert_eq!(expected_in_doubt, actual_in_doubt, "{context}: in doubt");
    for descriptor in expected.undecided() {
        for rm in &descriptor.participants {
            assert_eq!(
                expected.acceptor_state(descriptor.txn, *rm),
                actual.acceptor_state(descriptor.txn, *rm),
                "{context}: acceptor state of {} instance {rm}",
                descriptor.txn
            );
        }
    }
    // Everything else: outcome window and its order, locks, leader round, deadlines, PRNG.
    assert!(expected == actual, "{context}: node state differs");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Recovering from the checkpoint of any log prefix gives the node that recovering
    /// from the prefix itself gives; so does checkpointing a checkpoint plus the records
    /// after it (what the log compactor does each time).
    #[test]
    fn recovery_from_a_checkpoint_equals_recovery_from_the_full_log(
        seed in any::<u64>(),
        transactions in 1u64..60,
        keys in 1u64..8,
        small_window in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 2),
    ) {
        let window = if small_window { 5 } else { 1_000_000 };
        let harness = random_history(seed, transactions, keys, window);
        for (position, log) in harness.logs.iter().enumerate() {
            let index = position as u64 + 1;
            let mut cut_points: Vec<usize> = cuts.iter().map(|cut| cut.index(log.len() + 1)).collect();
            cut_points.sort();
            let (first, second) = (cut_points[0], cut_points[1]);
            let prefix = log[..second].to_vec();
            let context = format!("seed {seed} node {index} cut {second} of {}", log.len());
            let checkpoint = Node::checkpoint_log(prefix.clone(), window);
            assert_same_node(
                &recover(index, window, prefix.clone()),
                &recover(index, window, checkpoint.clone()),
                &context,
            );
            // Checkpoint, more records, checkpoint again.
            let mut chained = Node::checkpoint_log(log[..first].to_vec(), window);
            chained.extend_from_slice(&log[first..second]);
            let rechecked = Node::checkpoint_log(chained.clone(), window);
            assert_same_node(
                &recover(index, window, prefix.clone()),
                &recover(index, window, chained),
                &format!("{context}, first checkpoint at {first}"),
            );
            prop_assert_eq!(&rechecked, &checkpoint, "{}: checkpoints differ", context);
            // Records after a checkpoint replay as they would after the full prefix.
            let mut after_checkpoint = checkpoint;
            after_checkpoint.extend_from_slice(&log[second..]);
            assert_same_node(
                &recover(index, window, log.clone()),
                &recover(index, window, after_checkpoint),
                &format!("{context}, rest of the log after the checkpoint"),
            );
        }
    }
}

#[test]
fn checkpoint_size_follows_the_keys_and_open_state_not_the_history() {
    let keys = 10;
    let window = 16;
    let measure = |transactions: u64| {
        let mut harness = harness(window);
        let mut rng = Rng::new(transactions);
        for sequence in 1..=transactions {
            let operations = (0..2)
                .map(|index| Operation::Write {
                    key: Key::new(format!("k{}", (sequence + index * 3) % keys)),
                    value: Value::new(format!("value-{}", rng.below(1000)).into_bytes()),
                })
                .collect();
            harness.begin(operations);
            harness.settle();
        }
        let mut full_bytes = 0;
        let mut checkpoint_bytes = 0;
        for (position, log) in harness.logs.iter().enumerate() {
            let checkpoint = Node::checkpoint_log(log.clone(), window);
            assert_same_node(
                &recover(position as u64 + 1, window, log.clone()),
                &recover(position as u64 + 1, window, checkpoint.clone()),
                &format!("{transactions} transactions"),
            );
            full_bytes += encoded_bytes(log);
            checkpoint_bytes += encoded_bytes(&checkpoint);
        }
        (full_bytes, checkpoint_bytes)
    };
    let (full_small, checkpoint_small) = measure(200);
    let (full_large, checkpoint_large) = measure(2_000);
    // The log grows with the history...
    assert!(full_large > 8 * full_small, "{full_large} vs {full_small}");
    // ...the checkpoint does not: rows of 10 keys, 16 outcomes per node, a leader round.
    // Values and versions differ in length by a few bytes.
    assert!(
        checkpoint_large <= checkpoint_small + 64,
        "checkpoint after 2,000 transactions: {checkpoint_large} bytes, after 200: {checkpoint_small}"
    );
    assert!(
        checkpoint_large < 3 * 1024,
        "{checkpoint_large} bytes for 10 keys and 3 x 16 outcomes"
    );
}

#[test]
fn a_prepared_transaction_keeps_its_vote_locks_and_acceptor_state_through_a_checkpoint() {
    let window = 1_000;
    let mut harness = harness(window);
    let setup = harness.begin(vec![write("n1/a", "0"), write("n2/b", "0")]);
    harness.settle();
    assert!(matches!(
        harness.result(setup),
        Some(TxnResult::Committed { .. })
    ));
    // n1 and n2 get their Prepares and vote Prepared; every message they send is lost,
    // so each is in doubt (n1's own acceptor accepted its vote: that goes at once).
    let stuck = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    let prepares: Vec<(NodeId, Envelope)> = harness.mail.drain(..).collect();
    for (from, envelope) in prepares {
        let index = (envelope.to.0 - 1) as usize;
        let input = Input::Receive {
            from,
            messages: envelope.messages,
        };
        harness.nodes[index].handle(harness.now, input);
        harness.collect_node(index);
    }
    harness.mail.clear();
    let node_one = &harness.nodes[0];
    assert_eq!(node_one.in_doubt().collect::<Vec<_>>(), vec![stuck]);
    let log = harness.logs[0].clone();
    let checkpoint = Node::checkpoint_log(log.clone(), window);
    let recovered = recover(1, window, checkpoint.clone());
    assert_same_node(&recover(1, window, log), &recovered, "in doubt");
    assert_eq!(recovered.in_doubt().collect::<Vec<_>>(), vec![stuck]);
    assert_eq!(
        recovered.store().get(&Key::new("n1/a")).1,
        Version(1),
        "the committed version survives"
    );
    assert!(checkpoint.iter().any(|record| matches!(
        record,
        Record::Vote { descriptor, locks, .. } if descriptor.txn == stuck && !locks.is_empty()
    )));
}
