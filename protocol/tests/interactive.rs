//! Interactive transactions through real `Node`s: waiting locks, a deadlock across two
//! nodes broken by edge chasing, early release at read-only participants, and the
//! timeouts that keep a dead client from holding locks forever.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

fn execute(harness: &mut Harness, txn: TxnId, operation: Operation) {
    harness.client.execute(harness.now, txn, operation).unwrap();
    harness.collect_client();
    harness.settle();
}

fn commit(harness: &mut Harness, txn: TxnId) {
    commit_with(harness, txn, Vec::new());
}

/// Commits with `writes` buffered into the prepares, and runs the cluster until quiet.
fn commit_with(harness: &mut Harness, txn: TxnId, writes: Vec<Operation>) {
    harness
        .client
        .commit_with(harness.now, txn, writes)
        .unwrap();
    harness.collect_client();
    harness.settle();
}

/// `txn` aborted, for a reason that `expected` accepts.
fn assert_aborted(harness: &Harness, txn: TxnId, expected: fn(&AbortReason) -> bool) {
    assert!(
        matches!(
            harness.result(txn),
            Some(TxnResult::Aborted { reason: Some(reason) }) if expected(reason)
        ),
        "{:?}",
        harness.result(txn)
    );
}

/// `txn` aborted because a lock it needed was held.
fn assert_lock_conflict(harness: &Harness, txn: TxnId) {
    assert_aborted(harness, txn, |reason| {
        matches!(reason, AbortReason::LockConflict { .. })
    });
}

/// No node has an execution, a lock wait or an undecided transaction left.
fn assert_nothing_left_open(harness: &Harness) {
    for node in &harness.nodes {
        assert_eq!(node.executions(), (0, 0));
        assert_eq!(node.undecided().count(), 0);
    }
}

fn commits(harness: &mut Harness, txn: TxnId) {
    commit(harness, txn);
    assert!(
        matches!(harness.result(txn), Some(TxnResult::Committed { .. })),
        "{:?}",
        harness.result(txn)
    );
}

/// Three nodes with n1/a = 10 and n2/b = 0 committed.
fn with_a_and_b() -> Harness {
    let mut harness = Harness::new(3);
    let setup = harness.begin(vec![write("n1/a", "10"), write("n2/b", "0")]);
    harness.settle();
    assert!(matches!(
        harness.result(setup),
        Some(TxnResult::Committed { .. })
    ));
    harness
}

#[test]
fn interactive_read_modify_write_commits_and_is_durable() {
    let mut harness = with_a_and_b();
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    execute(&mut harness, txn, read("n2/b"));
    assert_eq!(harness.executed.len(), 2);
    execute(&mut harness, txn, write("n1/a", "7"));
    execute(&mut harness, txn, write("n2/b", "3"));
    // Intents are invisible until commit.
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).0,
        Some(&Value::new(b"10".to_vec()))
    );
    commit(&mut harness, txn);
    let Some(TxnResult::Committed { reads, .. }) = harness.result(txn) else {
        panic!("not committed: {:?}", harness.result(txn));
    };
    assert_eq!(reads.len(), 2);
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).0,
        Some(&Value::new(b"7".to_vec()))
    );
    assert_eq!(
        harness.nodes[1].store().get(&Key::new("n2/b")).0,
        Some(&Value::new(b"3".to_vec()))
    );
    assert_nothing_left_open(&harness);
}

#[test]
fn a_writer_waits_for_a_reader_and_runs_when_it_commits() {
    let mut harness = Harness::new(3);
    let reader = harness.client.begin_interactive(harness.now).unwrap();
    let writer = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, reader, read("n1/a"));
    execute(&mut harness, reader, write("n2/b", "1"));
    execute(&mut harness, writer, write("n1/a", "2"));
    assert_eq!(harness.nodes[0].executions(), (2, 1), "the writer waits");
    commits(&mut harness, reader);
    assert_eq!(
        harness.nodes[0].executions(),
        (1, 0),
        "the writer got the lock"
    );
    commits(&mut harness, writer);
}

#[test]
fn read_only_participant_releases_its_shared_locks_at_prepare() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    execute(&mut harness, txn, write("n2/b", "1"));
    // Deliver the prepares but hold every Phase2b back: the transaction stays undecided.
    harness.drop_to = vec![CLIENT];
    prepare_and_hold(&mut harness, txn, Vec::new());
    assert_eq!(harness.nodes[0].in_doubt().count(), 1, "n1 voted Prepared");
    assert_eq!(harness.nodes[1].in_doubt().count(), 1, "n2 voted Prepared");
    // n1 was read-only: a writer of n1/a is not blocked; n2 still holds n2/b.
    let other = harness
        .client
        .begin(harness.now, vec![write("n1/a", "9")])
        .unwrap();
    harness.collect_client();
    harness.drop_to.clear();
    let blocked = harness
        .client
        .begin(harness.now, vec![write("n2/b", "9")])
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert!(matches!(
        harness.result(other),
        Some(TxnResult::Committed { .. })
    ));
    assert!(matches!(
        harness.result(blocked),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::LockConflict { .. })
        })
    ));
}

#[test]
fn a_deadlock_across_two_nodes_aborts_the_youngest_and_the_other_commits() {
    let mut harness = Harness::new(3);
    let older = harness.client.begin_interactive(harness.now).unwrap();
    let younger = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, older, write("n1/a", "older"));
    execute(&mut harness, younger, write("n2/b", "younger"));
    execute(&mut harness, older, write("n2/b", "older"));
    execute(&mut harness, younger, write("n1/a", "younger"));
    assert_eq!(
        harness.nodes[0].executions().1 + harness.nodes[1].executions().1,
        2,
        "both wait: a deadlock"
    );
    for _ in 0..10 {
        harness.advance(Duration::from_millis(3));
    }
    assert_eq!(
        harness.result(younger),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::Deadlock)
        }),
        "the youngest on the cycle is the victim"
    );
    assert_eq!(
        harness
            .executed
            .iter()
            .filter(|done| done.txn == older)
            .count(),
        2,
        "the older one got its lock"
    );
    commits(&mut harness, older);
    assert_eq!(
        harness.nodes[1].store().get(&Key::new("n2/b")).0,
        Some(&Value::new(b"older".to_vec()))
    );
}

#[test]
fn a_local_deadlock_from_two_upgrades_is_broken_at_once() {
    let mut harness = Harness::new(3);
    let first = harness.client.begin_interactive(harness.now).unwrap();
    let second = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, first, read("n1/a"));
    execute(&mut harness, second, read("n1/a"));
    execute(&mut harness, first, write("n1/a", "1"));
    execute(&mut harness, second, write("n1/a", "2"));
    // No timer needed: the cycle is local to n1.
    assert_eq!(
        harness.result(second),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::Deadlock)
        })
    );
    commits(&mut harness, first);
}

#[test]
fn wound_wait_aborts_the_younger_holder() {
    let mut harness = Harness::new(3);
    let cluster = cluster(3);
    for index in 0..3 {
        let mut config = config(index as u64 + 1, &cluster);
        config.deadlock = DeadlockPolicy::WoundWait;
        harness.nodes[index] = Node::new(config);
    }
    let older = harness.client.begin_interactive(harness.now).unwrap();
    let younger = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, younger, write("n1/a", "young"));
    execute(&mut harness, older, write("n1/a", "old"));
    assert_eq!(
        harness.result(younger),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::Wounded)
        })
    );
    commits(&mut harness, older);
}

#[test]
fn a_client_that_vanishes_mid_transaction_loses_its_locks_after_the_idle_timeout() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, write("n1/a", "1"));
    harness.drop_to = vec![CLIENT];
    assert_eq!(harness.nodes[0].executions(), (1, 0));
    harness.advance(Duration::from_secs(31));
    assert_eq!(
        harness.nodes[0].executions(),
        (0, 0),
        "idle transaction aborted and forgotten"
    );
    harness.drop_to.clear();
    let next = harness.begin(vec![write("n1/a", "2")]);
    harness.settle();
    assert!(
        matches!(harness.result(next), Some(TxnResult::Committed { .. })),
        "lock released"
    );
}

#[test]
fn a_lock_wait_longer_than_the_timeout_aborts_the_waiter() {
    let mut harness = Harness::new(3);
    let holder = harness.client.begin_interactive(harness.now).unwrap();
    let waiter = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, holder, write("n1/a", "1"));
    execute(&mut harness, waiter, write("n1/a", "2"));
    for _ in 0..6 {
        harness.advance(Duration::from_secs(1));
    }
    assert!(matches!(
        harness.result(waiter),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::LockWaitTimeout { .. })
        })
    ));
    commits(&mut harness, holder);
}

#[test]
fn prepare_after_an_rm_lost_its_execution_votes_aborted() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, write("n1/a", "1"));
    execute(&mut harness, txn, write("n2/b", "1"));
    // n2 restarts: its uncommitted execution state is gone.
    let cluster = cluster(3);
    let records = harness.logs[1].clone();
    harness.nodes[1] = Node::recover(config(2, &cluster), harness.now, records);
    commit(&mut harness, txn);
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Aborted {
            reason: Some(AbortReason::ExecutionLost)
        })
    );
    assert_eq!(harness.nodes[0].store().get(&Key::new("n1/a")).0, None);
}

#[test]
fn heartbeats_let_nodes_abort_a_dead_clients_execution_long_before_the_idle_timeout() {
    let mut harness = Harness::new(3);
    let cluster = cluster(3);
    let detector = DetectorConfig {
        interval: Duration::from_millis(10),
        ..DetectorConfig::default()
    };
    for index in 0..3 {
        let mut config = config(index as u64 + 1, &cluster);
        config.detector = Some(detector.clone());
        harness.nodes[index] = Node::new(config);
    }
    harness.client = Client::new(ClientConfig {
        detector: Some(detector),
        ..ClientConfig::new(CLIENT, cluster.clone(), 1)
    });
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, write("n1/a", "1"));
    // The client lives a while (heartbeats flow), then vanishes.
    for _ in 0..50 {
        harness.advance(Duration::from_millis(10));
    }
    assert_eq!(harness.nodes[0].executions(), (1, 0));
    assert!(harness.nodes[0].suspected().is_empty());
    harness.drop_to = vec![CLIENT];
    // Its process is gone: nothing sends its heartbeats any more.
    harness.client = Client::new(ClientConfig {
        detector: None,
        ..ClientConfig::new(NodeId(999), cluster, 2)
    });
    let vanished = harness.now;
    let mut aborted_after = None;
    for step in 0..200 {
        harness.advance(Duration::from_millis(10));
        if harness.nodes[0].executions() == (0, 0) {
            aborted_after = Some(step);
            break;
        }
    }
    let aborted_after = aborted_after.expect("execution of a dead client never aborted");
    assert!(
        harness.now.since(vanished) < Duration::from_secs(1),
        "suspected within a second, not after the 30 s idle timeout"
    );
    assert!(
        harness.nodes[0].suspected().contains(&CLIENT),
        "after {aborted_after} steps"
    );
}

/// Delivers only the Prepare/PrepareExecuted messages of a commit (with `writes`
/// buffered) to the nodes and makes their votes durable, holding every other message
/// back: the transaction stays undecided with its locks as prepare left them.
fn prepare_and_hold(harness: &mut Harness, txn: TxnId, writes: Vec<Operation>) {
    harness
        .client
        .commit_with(harness.now, txn, writes)
        .unwrap();
    harness.collect_client();
    let mut steps = 0;
    while let Some((from, envelope)) = harness.mail.pop_front() {
        steps += 1;
        assert!(steps < 100);
        let is_prepare = envelope.messages.iter().any(|message| {
            matches!(
                message,
                Message::PrepareExecuted { .. } | Message::Prepare { .. }
            )
        });
        if !is_prepare || envelope.to == CLIENT {
            continue;
        }
        let index = (envelope.to.0 - 1) as usize;
        let now = harness.now;
        // Votes made durable; what the node sends is held back (dropped).
        receive(&mut harness.nodes[index], now, from, envelope.messages);
    }
}

#[test]
fn writes_buffered_until_commit_travel_with_the_prepares_and_commit() {
    let mut harness = with_a_and_b();
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    execute(&mut harness, txn, read("n2/b"));
    // n3 executed nothing: its buffered write goes in a one-shot Prepare.
    commit_with(
        &mut harness,
        txn,
        vec![write("n1/a", "7"), write("n2/b", "3"), write("n3/c", "x")],
    );
    let Some(TxnResult::Committed { reads, .. }) = harness.result(txn) else {
        panic!("not committed: {:?}", harness.result(txn));
    };
    assert_eq!(reads.len(), 2);
    for (index, key, value) in [(0, "n1/a", "7"), (1, "n2/b", "3"), (2, "n3/c", "x")] {
        assert_eq!(
            harness.nodes[index].store().get(&Key::new(key)).0,
            Some(&Value::new(value.as_bytes().to_vec())),
            "{key}"
        );
    }
    assert_nothing_left_open(&harness);
}

#[test]
fn a_buffered_write_whose_lock_is_taken_aborts_instead_of_waiting() {
    let mut harness = Harness::new(3);
    let holder = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, holder, read("n1/a"));
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    execute(&mut harness, txn, read("n2/b"));
    // Upgrading n1/a needs the holder's shared lock gone: prepare does not wait.
    commit_with(
        &mut harness,
        txn,
        vec![write("n1/a", "1"), write("n2/b", "1")],
    );
    assert_lock_conflict(&harness, txn);
    // Nothing of it is left at n2, and the holder still commits.
    assert_eq!(harness.nodes[1].executions(), (0, 0));
    commits(&mut harness, holder);
}

/// The same two read-modify-writes of one account as the test above, read for update:
/// the second waits at its read instead of both reaching prepare holding shared locks
/// that neither can upgrade; it then reads the first one's committed value.
#[test]
fn reads_for_update_make_the_second_read_modify_write_wait_instead_of_abort() {
    let mut harness = with_a_and_b();
    let first = harness.client.begin_interactive(harness.now).unwrap();
    let second = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, first, read_for_update("n1/a"));
    execute(&mut harness, second, read_for_update("n1/a"));
    assert_eq!(harness.nodes[0].executions(), (2, 1), "the second waits");
    assert_eq!(harness.executed.len(), 1);
    commit_with(
        &mut harness,
        first,
        vec![write("n1/a", "7"), write("n2/b", "3")],
    );
    assert!(matches!(
        harness.result(first),
        Some(TxnResult::Committed { .. })
    ));
    // The lock passed to the second, whose read now sees the committed 7.
    assert_eq!(harness.executed.len(), 2);
    let seen = harness.executed.last().unwrap();
    assert_eq!(seen.txn, second);
    let value = seen.read.as_ref().and_then(|read| read.value.clone());
    assert_eq!(value, Some(Value::new(b"7".to_vec())));
    commit_with(&mut harness, second, vec![write("n1/a", "6")]);
    assert!(matches!(
        harness.result(second),
        Some(TxnResult::Committed { .. })
    ));
    assert_eq!(
        harness.nodes[0].store().get(&Key::new("n1/a")).0,
        Some(&Value::new(b"6".to_vec()))
    );
    assert_nothing_left_open(&harness);
}

/// A read for update waits for a plain reader's shared lock like a write does, and a
/// plain read waits for it.
#[test]
fn a_read_for_update_excludes_plain_readers_both_ways() {
    let mut harness = with_a_and_b();
    let reader = harness.client.begin_interactive(harness.now).unwrap();
    let locker = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, reader, read("n1/a"));
    execute(&mut harness, locker, read_for_update("n1/a"));
    assert_eq!(harness.nodes[0].executions(), (2, 1), "the locker waits");
    commits(&mut harness, reader);
    assert_eq!(harness.nodes[0].executions(), (1, 0), "the locker got it");
    let late = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, late, read("n1/a"));
    assert_eq!(harness.nodes[0].executions(), (2, 1), "the reader waits");
    commits(&mut harness, locker);
    commits(&mut harness, late);
    assert_nothing_left_open(&harness);
}

#[test]
fn reads_cannot_be_buffered_until_commit() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    let error = harness
        .client
        .commit_with(harness.now, txn, vec![write("n1/a", "1"), read("n2/b")])
        .unwrap_err();
    assert!(
        matches!(error, ExecuteError::ReadAtCommit { .. }),
        "{error}"
    );
    // Still open: it can go on.
    execute(&mut harness, txn, read("n2/b"));
    assert_eq!(harness.executed.len(), 1);
}

/// Two-phase locking across nodes: with a write buffered until prepare at n2, the
/// transaction's lock point is not behind it when n1 (read-only) prepares, so n1 must
/// keep its shared lock (compare `read_only_participant_releases_its_shared_locks_at_prepare`,
/// where every lock was taken before commit). Releasing it would let a writer of n1/a and
/// n2/b slip in between this transaction's read of n1/a and its write of n2/b.
#[test]
fn a_read_only_participant_keeps_its_locks_when_another_locks_at_prepare() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    harness.drop_to = vec![CLIENT];
    prepare_and_hold(&mut harness, txn, vec![write("n2/b", "1")]);
    assert_eq!(harness.nodes[0].in_doubt().count(), 1, "n1 voted Prepared");
    assert_eq!(harness.nodes[1].in_doubt().count(), 1, "n2 voted Prepared");
    harness.drop_to.clear();
    let writer = harness
        .client
        .begin(harness.now, vec![write("n1/a", "9")])
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert_lock_conflict(&harness, writer);
}

/// The RM checks too: a client that smuggles a read among the writes buffered until
/// prepare gets an Aborted vote naming the read, not a crash or a silent read.
#[test]
fn a_read_among_buffered_writes_votes_aborted() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, read("n1/a"));
    harness
        .client
        .commit_with(harness.now, txn, vec![write("n1/a", "1")])
        .unwrap();
    harness.collect_client();
    for (_, envelope) in harness.mail.iter_mut() {
        for message in &mut envelope.messages {
            if let Message::PrepareExecuted { at_prepare, .. } = message {
                *at_prepare = vec![read("n1/a")];
            }
        }
    }
    harness.settle();
    assert_aborted(&harness, txn, |reason| {
        matches!(reason, AbortReason::ReadAtPrepare { .. })
    });
    assert_nothing_left_open(&harness);
}

#[test]
fn a_waiting_execution_aborted_by_its_client_does_not_inherit_the_lock() {
    let mut harness = Harness::new(3);
    let holder = harness.client.begin_interactive(harness.now).unwrap();
    let waiter = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, holder, write("n1/a", "1"));
    execute(&mut harness, waiter, write("n1/a", "2"));
    harness.client.abort(harness.now, waiter).unwrap();
    harness.collect_client();
    harness.settle();
    commits(&mut harness, holder);
    let next = harness.begin(vec![write("n1/a", "3")]);
    harness.settle();
    assert!(
        matches!(harness.result(next), Some(TxnResult::Committed { .. })),
        "{:?}",
        harness.result(next)
    );
    assert_nothing_left_open(&harness);
}

/// An Execute that reaches its node after the client's AbortExecution (a duplicate
/// delivered late, a retry that crossed the abort, a delayed link) must not open an
/// execution that nobody will ever end: it would hold its lock until the idle timeout
/// (30 s by default) and abort every transaction touching the key meanwhile.
#[test]
fn an_execute_arriving_after_its_abort_takes_no_lock() {
    for duplicate_before_abort in [true, false] {
        let mut harness = Harness::new(3);
        let late = harness.client.begin_interactive(harness.now).unwrap();
        harness
            .client
            .execute(harness.now, late, write("n1/a", "1"))
            .unwrap();
        harness.collect_client();
        // Keep a copy of the Execute, as a duplicating or delaying network would.
        let copy: Vec<_> = harness.mail.iter().cloned().collect();
        if duplicate_before_abort {
            // The original runs (takes the lock), then the abort, then the copy.
            harness.settle();
        } else {
            // The original is lost: the abort comes first, then the copy.
            harness.mail.clear();
        }
        harness.client.abort(harness.now, late).unwrap();
        harness.collect_client();
        harness.settle();
        harness.mail.extend(copy);
        harness.settle();
        let next = harness.begin(vec![write("n1/a", "3")]);
        harness.settle();
        assert!(
            matches!(harness.result(next), Some(TxnResult::Committed { .. })),
            "duplicate before abort {duplicate_before_abort}: {:?}",
            harness.result(next)
        );
        assert_nothing_left_open(&harness);
    }
}
