//! A client every node refuses after its Prepare went out (its user was removed while the
//! transaction was in flight): it reports the outcome as unknown at once instead of
//! retrying for minutes, and never as "not committed", because the participant prepared
//! before the refusals began and the transaction may well have committed.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

/// Answers every message the client has in the mail with a Refused from its addressee.
fn refuse_everything_from_the_client(harness: &mut Harness) {
    let mail: Vec<(NodeId, Envelope)> = harness.mail.drain(..).collect();
    for (from, envelope) in mail {
        if from != CLIENT {
            harness.mail.push_back((from, envelope));
            continue;
        }
        for message in envelope.messages {
            harness.mail.push_back((
                envelope.to,
                Envelope {
                    to: CLIENT,
                    messages: vec![Message::Refused {
                        txn: message.txn(),
                        reason: Refusal::Unauthenticated,
                    }],
                },
            ));
        }
    }
}

/// Steps the client's timers in 100 ms steps, every node refusing whatever it sends, until
/// `txn` finishes or ten simulated minutes pass; returns how long that took.
fn run_refused(harness: &mut Harness, txn: TxnId) -> Duration {
    let started = harness.now;
    while harness.result(txn).is_none() && harness.now.since(started) < Duration::from_secs(600) {
        harness.now = harness.now.saturating_add(Duration::from_millis(100));
        if harness
            .client
            .poll_timeout()
            .is_some_and(|due| due <= harness.now)
        {
            harness.client.handle(harness.now, Input::Timeout);
            harness.collect_client();
        }
        refuse_everything_from_the_client(harness);
        harness.settle();
    }
    harness.now.since(started)
}

/// Fails on the main of 2026-12-02: with every node refusing, the client retried its
/// Resolves until `retries_max` (100 retries of up to 4 s: about five minutes) and
/// `commit` did not return in between.
#[test]
fn a_client_refused_by_every_node_after_its_prepare_reports_unknown_within_seconds() {
    let mut harness = Harness::new(3);
    // The Prepare reaches n1, which prepares; the acceptors commit; nothing reaches the
    // client (its session is being revoked).
    harness.drop_to.push(CLIENT);
    let txn = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    assert_eq!(harness.nodes[0].known_outcome(txn), Some(Outcome::Commit));
    harness.drop_to.clear();

    let waited = run_refused(&mut harness, txn);
    assert_eq!(harness.result(txn), Some(&TxnResult::Unknown));
    assert!(
        waited < Duration::from_secs(15),
        "the client gave up only after {waited:?}"
    );
}

/// The outcome is known but the only reader's results cannot come: the client reports
/// the commit with its reads lost instead of retrying until it gives up as unknown.
#[test]
fn a_known_commit_whose_reader_refuses_is_reported_committed_with_reads_lost() {
    let mut harness = Harness::new(3);
    harness.drop_to.push(CLIENT);
    let txn = harness.begin(vec![read("n1/a"), write("n1/a", "1")]);
    harness.settle();
    harness.drop_to.clear();
    // An acceptor's Decision reaches the client; n1 (the reader) refuses it from now on.
    harness.mail.push_back((
        NodeId(2),
        Envelope {
            to: CLIENT,
            messages: vec![Message::Decision {
                txn,
                outcome: Outcome::Commit,
                reads: None,
            }],
        },
    ));
    harness.settle();
    assert_eq!(harness.result(txn), None, "n1's reads are awaited");
    let waited = run_refused(&mut harness, txn);
    assert!(
        matches!(
            harness.result(txn),
            Some(TxnResult::Committed {
                reads_lost: true,
                ..
            })
        ),
        "{:?}",
        harness.result(txn)
    );
    assert!(
        waited < Duration::from_secs(15),
        "the client gave up only after {waited:?}"
    );
}
