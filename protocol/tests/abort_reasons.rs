//! Every abort says why: for each reason a participant can abort a transaction for, the
//! client's result carries it and names that participant ([`Finished::participant`]),
//! including when the acceptors' Phase2b tells the client of the Abort before the
//! participant's own `VoteNotice` (which carries the reason) arrives.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

/// How `txn` finished: its result and the participant it names.
fn finished(harness: &Harness, txn: TxnId) -> (TxnResult, Option<NodeId>) {
    let finished = harness
        .finished
        .iter()
        .find(|finished| finished.txn == txn)
        .unwrap_or_else(|| panic!("{txn} did not finish"));
    (finished.result.clone(), finished.participant)
}

/// `txn` aborted for `reason`, given by `participant`.
fn assert_aborted_by(harness: &Harness, txn: TxnId, participant: NodeId, reason: AbortReason) {
    assert_eq!(
        finished(harness, txn),
        (
            TxnResult::Aborted {
                reason: Some(reason)
            },
            Some(participant)
        )
    );
}

fn update(key: &str, value: &str) -> Operation {
    Operation::Update {
        key: Key::new(key),
        value: Value::new(value.as_bytes().to_vec()),
    }
}

/// Delivers one envelope as `Harness::settle` does.
fn deliver(harness: &mut Harness, from: NodeId, envelope: Envelope) {
    let input = Input::Receive {
        from,
        messages: envelope.messages,
    };
    if envelope.to == CLIENT {
        harness.client.handle(harness.now, input);
        harness.collect_client();
    } else {
        let index = (envelope.to.0 - 1) as usize;
        harness.nodes[index].handle(harness.now, input);
        harness.collect_node(index);
    }
}

/// Delivers everything until quiet, except the `VoteNotice`s bound for the client: they
/// are kept back (the race: every acceptor's Phase2b reaches the client before them) and
/// returned.
fn settle_keeping_notices_back(harness: &mut Harness) -> Vec<(NodeId, Envelope)> {
    let mut kept = Vec::new();
    let mut steps = 0;
    while let Some((from, mut envelope)) = harness.mail.pop_front() {
        steps += 1;
        assert!(steps < 100_000, "message storm");
        if envelope.to == CLIENT {
            let (notices, rest): (Vec<Message>, Vec<Message>) = envelope
                .messages
                .into_iter()
                .partition(|message| matches!(message, Message::VoteNotice { .. }));
            if !notices.is_empty() {
                let notices = Envelope {
                    to: CLIENT,
                    messages: notices,
                };
                kept.push((from, notices));
            }
            envelope.messages = rest;
        }
        if !envelope.messages.is_empty() {
            deliver(harness, from, envelope);
        }
    }
    kept
}

/// A one-shot transaction writing `n1/a` and updating the missing `n2/missing`: n2 votes
/// Aborted.
fn begin_with_a_missing_key(harness: &mut Harness) -> TxnId {
    harness.begin(vec![write("n1/a", "1"), update("n2/missing", "x")])
}

fn missing_key() -> AbortReason {
    AbortReason::UpdateOfMissingKey {
        key: Key::new("n2/missing"),
    }
}

#[test]
fn update_of_a_missing_key_names_the_participant_and_the_key() {
    let mut harness = Harness::new(3);
    let txn = begin_with_a_missing_key(&mut harness);
    harness.settle();
    assert_aborted_by(&harness, txn, N2, missing_key());
}

#[test]
fn the_reason_arrives_when_the_acceptors_tell_the_abort_before_the_participant() {
    let mut harness = Harness::new(3);
    let txn = begin_with_a_missing_key(&mut harness);
    let notices = settle_keeping_notices_back(&mut harness);
    assert!(
        !notices.is_empty(),
        "n2's notice was kept back while the acceptors' Phase2b went through"
    );
    assert_eq!(
        harness.result(txn),
        None,
        "the client knows the Abort from the acceptors and holds it for n2's reason"
    );
    // Later, but well within the wait: the notice arrives and the Abort is reported
    // with it.
    harness.advance(Duration::from_millis(50));
    assert_eq!(harness.result(txn), None);
    harness.mail.extend(notices);
    harness.settle();
    assert_aborted_by(&harness, txn, N2, missing_key());
}

#[test]
fn a_lost_notice_is_asked_for_again_after_the_wait() {
    let mut harness = Harness::new(3);
    let wait = ClientConfig::new(CLIENT, cluster(3), 1).abort_reason_wait;
    let txn = begin_with_a_missing_key(&mut harness);
    let lost = settle_keeping_notices_back(&mut harness);
    assert!(!lost.is_empty());
    harness.advance(wait / 2);
    assert_eq!(harness.result(txn), None, "still waiting for the reason");
    // The wait is over: the client asks n2 (a Resolve), which has decided and repeats
    // its notice.
    harness.advance(wait / 2);
    assert_aborted_by(&harness, txn, N2, missing_key());
}

#[test]
fn a_reason_lost_for_good_holds_the_abort_for_two_waits_only() {
    let mut harness = Harness::new(3);
    let wait = ClientConfig::new(CLIENT, cluster(3), 1).abort_reason_wait;
    let txn = begin_with_a_missing_key(&mut harness);
    let lost = settle_keeping_notices_back(&mut harness);
    assert!(!lost.is_empty());
    // n2 is cut off after its vote: asking it again brings nothing.
    harness.drop_to = vec![N2];
    harness.advance(wait);
    assert_eq!(
        harness.result(txn),
        None,
        "asked n2 again, waiting once more"
    );
    harness.advance(wait);
    assert_eq!(
        finished(&harness, txn),
        (TxnResult::Aborted { reason: None }, Some(N2)),
        "after two waits: aborted, the reason lost, the participant known from the tally"
    );
}

#[test]
fn a_version_changed_since_it_was_read_names_the_key_and_both_versions() {
    let mut harness = Harness::new(3);
    let first = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    assert!(matches!(
        harness.result(first),
        Some(TxnResult::Committed { .. })
    ));
    let stale = harness.begin(vec![
        Operation::Read {
            key: Key::new("n1/a"),
            expected: Some(Version(0)),
        },
        write("n2/b", "2"),
    ]);
    harness.settle();
    let (result, participant) = finished(&harness, stale);
    assert_eq!(participant, Some(N1));
    match result {
        TxnResult::Aborted {
            reason:
                Some(AbortReason::VersionMismatch {
                    key,
                    expected,
                    actual,
                }),
        } => {
            assert_eq!(key, Key::new("n1/a"));
            assert_eq!(expected, 0);
            assert_ne!(actual, 0);
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
}

#[test]
fn a_lock_conflict_names_the_transaction_holding_the_lock() {
    let mut harness = Harness::new(3);
    let holder = harness
        .client
        .begin(harness.now, vec![write("n1/a", "1"), write("n2/b", "1")])
        .unwrap();
    // Only n1 gets its Prepare: it holds n1/a for `holder`, undecided.
    harness.collect_client();
    let (to_n1, rest): (Vec<_>, Vec<_>) = harness
        .mail
        .drain(..)
        .partition(|(_, envelope)| envelope.to == N1);
    harness.mail.extend(to_n1);
    harness.settle();
    let contender = harness.begin(vec![write("n1/a", "2")]);
    harness.settle();
    assert_aborted_by(
        &harness,
        contender,
        N1,
        AbortReason::LockConflict {
            key: Key::new("n1/a"),
            holder: Some(holder),
        },
    );
    let (_, participant) = finished(&harness, contender);
    assert_eq!(participant, Some(N1));
    harness.mail.extend(rest);
    harness.settle();
}

#[test]
fn a_deadlock_victim_is_told_so_by_the_node_where_it_waited() {
    let mut harness = Harness::new(3);
    let older = harness.client.begin_interactive(harness.now).unwrap();
    let younger = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, older, write("n1/a", "older"));
    execute(&mut harness, younger, write("n2/b", "younger"));
    execute(&mut harness, older, write("n2/b", "older"));
    execute(&mut harness, younger, write("n1/a", "younger"));
    for _ in 0..10 {
        harness.advance(Duration::from_millis(3));
    }
    // The younger waits at n1 (for n1/a): n1 aborts it there.
    assert_aborted_by(&harness, younger, N1, AbortReason::Deadlock);
}

#[test]
fn a_lock_wait_timeout_names_the_key_and_the_node() {
    let mut harness = Harness::new(3);
    let holder = harness.client.begin_interactive(harness.now).unwrap();
    let waiter = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, holder, write("n2/a", "1"));
    execute(&mut harness, waiter, write("n2/a", "2"));
    for _ in 0..6 {
        harness.advance(Duration::from_secs(1));
    }
    assert_aborted_by(
        &harness,
        waiter,
        N2,
        AbortReason::LockWaitTimeout {
            key: Key::new("n2/a"),
        },
    );
}

#[test]
fn a_participant_that_never_votes_is_named_as_giving_no_vote() {
    let mut harness = Harness::new(3);
    // n2 is gone: nothing reaches it, so it never votes; n1 votes Prepared, times out
    // waiting for the outcome and, as recovery leader, finds no vote for n2's instance
    // and chooses Aborted for it.
    harness.drop_to = vec![N2];
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    harness.settle();
    assert_eq!(harness.result(txn), None);
    for _ in 0..40 {
        harness.advance(Duration::from_millis(10));
        if harness.result(txn).is_some() {
            break;
        }
    }
    assert_aborted_by(&harness, txn, N2, AbortReason::NoVote);
}

/// A killed or paused owner of an outstanding interactive operation: once the client
/// suspects it, the next retry gives the transaction up (naming the owner) instead of
/// retrying for the whole outage, and the locks it took elsewhere are released.
#[test]
fn an_interactive_operation_whose_owner_is_suspected_is_given_up_and_names_it() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, write("n1/a", "1"));
    harness.drop_to = vec![N2];
    execute(&mut harness, txn, write("n2/b", "1"));
    // Not suspected yet: the client retries (a slow node is not a dead one).
    harness.advance(Duration::from_secs(1));
    assert_eq!(harness.result(txn), None);
    harness.client.set_suspected([N2].into_iter().collect());
    for _ in 0..40 {
        harness.advance(Duration::from_millis(100));
        if harness.result(txn).is_some() {
            break;
        }
    }
    assert_aborted_by(
        &harness,
        txn,
        N2,
        AbortReason::ParticipantUnavailable { node: N2 },
    );
    // n1 released the lock: another transaction takes the key at once.
    let next = harness.begin(vec![write("n1/a", "2")]);
    harness.settle();
    assert!(
        matches!(harness.result(next), Some(TxnResult::Committed { .. })),
        "{:?}",
        harness.result(next)
    );
    assert_eq!(harness.nodes[0].executions(), (0, 0));
}

/// One-phase (a single participant): the RM's notice with the reason is lost (a stream
/// dropped under the client's feet, seen with real processes) and only its Decision
/// arrives. The client holds the Abort, asks the RM once, and reports the reason.
#[test]
fn a_one_phase_abort_whose_notice_is_lost_still_reports_its_reason() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![update("n2/missing", "x")]);
    assert!(harness
        .client
        .descriptor(txn)
        .is_some_and(|descriptor| descriptor.is_one_phase()));
    let lost = settle_keeping_notices_back(&mut harness);
    assert!(!lost.is_empty(), "the notice was sent");
    assert_eq!(harness.result(txn), None, "held for the reason");
    for _ in 0..10 {
        harness.advance(Duration::from_millis(100));
        if harness.result(txn).is_some() {
            break;
        }
    }
    assert_aborted_by(&harness, txn, N2, missing_key());
}

#[test]
fn a_services_refusal_reaches_the_client_in_its_own_words_even_after_the_abort() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![
        write("n1/a", "1"),
        Operation::Call {
            target: Key::new("n2/flights/LH400"),
            action: "reserve".to_string(),
            args: Value::new(b"{\"seats\":1}".to_vec()),
        },
    ]);
    // n2 plays a service's node here (the RM side of services is built elsewhere): it
    // votes Aborted with the service's refusal as an RM does, its ballot-0 Phase2a to
    // every acceptor and its notice to the client, and the notice comes last.
    let descriptor = harness.client.descriptor(txn).unwrap().clone();
    harness.mail.retain(|(_, envelope)| envelope.to != N2);
    for acceptor in descriptor.acceptors.iter().copied() {
        let phase2a = Message::Phase2a {
            descriptor: descriptor.clone(),
            rm: N2,
            ballot: Ballot::ZERO,
            value: Vote::Aborted,
        };
        harness.mail.push_back((
            N2,
            Envelope {
                to: acceptor,
                messages: vec![phase2a],
            },
        ));
    }
    harness.settle();
    assert_eq!(harness.result(txn), None, "held for n2's reason");
    let refusal = AbortReason::ServiceRefused {
        reason: "no seats left on LH400".to_string(),
    };
    let notice = Message::VoteNotice {
        txn,
        vote: Vote::Aborted,
        reason: Some(refusal.clone()),
        reads: Vec::new(),
    };
    harness.mail.push_back((
        N2,
        Envelope {
            to: CLIENT,
            messages: vec![notice],
        },
    ));
    harness.settle();
    assert_aborted_by(&harness, txn, N2, refusal);
}

#[test]
fn a_call_to_a_key_value_node_names_it_as_no_service() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![Operation::Call {
        target: Key::new("n3/flights"),
        action: "reserve".to_string(),
        args: Value::new(b"{}".to_vec()),
    }]);
    harness.settle();
    let (result, participant) = finished(&harness, txn);
    assert_eq!(participant, Some(NodeId(3)));
    assert!(
        matches!(
            result,
            TxnResult::Aborted {
                reason: Some(AbortReason::NoService { .. })
            }
        ),
        "{result:?}"
    );
}

#[test]
fn an_abort_the_client_asked_for_names_no_participant() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    execute(&mut harness, txn, write("n1/a", "1"));
    harness.client.abort(harness.now, txn).unwrap();
    harness.collect_client();
    harness.settle();
    assert_eq!(
        finished(&harness, txn),
        (
            TxnResult::Aborted {
                reason: Some(AbortReason::ClientAborted)
            },
            None
        )
    );
}

#[test]
fn every_reason_has_a_short_stable_label() {
    let key = Key::new("n1/a");
    let labelled = [
        (
            AbortReason::LockConflict {
                key: key.clone(),
                holder: None,
            },
            "lock_conflict",
        ),
        (
            AbortReason::UpdateOfMissingKey { key: key.clone() },
            "update_of_missing_key",
        ),
        (
            AbortReason::VersionMismatch {
                key: key.clone(),
                expected: 1,
                actual: 2,
            },
            "version_mismatch",
        ),
        (AbortReason::Deadlock, "deadlock"),
        (
            AbortReason::LockWaitTimeout { key: key.clone() },
            "lock_wait_timeout",
        ),
        (AbortReason::NoVote, "no_vote"),
        (
            AbortReason::ParticipantUnavailable { node: N2 },
            "participant_unavailable",
        ),
        (
            AbortReason::ServiceRefused {
                reason: "no".to_string(),
            },
            "service_refused",
        ),
        (
            AbortReason::StorageFull {
                used_bytes: 1,
                limit_bytes: 1,
            },
            "storage_full",
        ),
    ];
    for (reason, label) in labelled {
        assert_eq!(reason.kind(), label, "{reason:?}");
    }
}

#[test]
fn a_lock_conflict_logged_before_the_holder_field_still_decodes() {
    // A vote record written by an older build: `LockConflict { key }` alone.
    #[derive(serde::Serialize)]
    enum OldReason {
        LockConflict { key: Key },
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &OldReason::LockConflict {
            key: Key::new("n1/a"),
        },
        &mut bytes,
    )
    .unwrap();
    let decoded: AbortReason = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(
        decoded,
        AbortReason::LockConflict {
            key: Key::new("n1/a"),
            holder: None
        }
    );
}

fn execute(harness: &mut Harness, txn: TxnId, operation: Operation) {
    harness.client.execute(harness.now, txn, operation).unwrap();
    harness.collect_client();
    harness.settle();
}
