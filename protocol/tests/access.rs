//! Authorization by key prefix at the RMs, and a runtime's refusal to serve a client:
//! what the node votes, what the client reports, and that a refused node is never asked
//! to prepare again.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use dtx_protocol::testing::*;
use dtx_protocol::*;
use std::time::Duration;

fn prefixes(prefixes: &[&str]) -> Vec<Key> {
    prefixes.iter().map(|prefix| Key::new(*prefix)).collect()
}

/// Every node of `harness` serves CLIENT with these prefixes (or not at all, with None).
fn install(harness: &mut Harness, permissions: Option<Permissions>) {
    let mut policy = AccessPolicy::new();
    if let Some(permissions) = permissions {
        policy.insert(CLIENT, permissions).unwrap();
    }
    for node in &mut harness.nodes {
        node.set_access(Some(policy.clone()));
    }
}

fn unauthorized(harness: &Harness, txn: TxnId, key: &str) -> bool {
    matches!(
        harness.result(txn),
        Some(TxnResult::Aborted {
            reason: Some(AbortReason::Unauthorized { key: refused })
        }) if refused.as_str() == key
    )
}

#[test]
fn a_prepare_outside_the_permissions_votes_aborted_durably_and_aborts_everywhere() {
    let mut harness = Harness::new(3);
    install(
        &mut harness,
        Some(Permissions {
            read_write: prefixes(&["n1/"]),
            read_only: Vec::new(),
        }),
    );
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "evil")]);
    harness.settle();
    assert!(
        unauthorized(&harness, txn, "n2/b"),
        "{:?}",
        harness.result(txn)
    );
    for node in &harness.nodes {
        assert_eq!(
            node.known_outcome(txn),
            Some(Outcome::Abort),
            "{}",
            node.id()
        );
        assert!(node.store().rows().is_empty());
    }
    // n2's refusal is a durable Aborted vote naming the key.
    assert!(harness.logs[1].iter().any(|record| matches!(
        record,
        Record::Vote {
            vote: Vote::Aborted,
            reason: Some(AbortReason::Unauthorized { .. }),
            ..
        }
    )));
    // Within its prefix the client commits.
    let allowed = harness.begin(vec![write("n1/a", "1")]);
    harness.settle();
    assert!(matches!(
        harness.result(allowed),
        Some(TxnResult::Committed { .. })
    ));
}

#[test]
fn reads_need_read_permission_writes_need_write_and_no_entry_allows_nothing() {
    let mut harness = Harness::new(3);
    install(
        &mut harness,
        Some(Permissions {
            read_write: prefixes(&["n1/mine/"]),
            read_only: prefixes(&["n2/"]),
        }),
    );
    let read = harness.begin(vec![testing::read("n2/x"), write("n1/mine/y", "1")]);
    harness.settle();
    assert!(matches!(
        harness.result(read),
        Some(TxnResult::Committed { .. })
    ));
    let write_read_only = harness.begin(vec![write("n2/x", "1")]);
    harness.settle();
    assert!(unauthorized(&harness, write_read_only, "n2/x"));
    // A read for update locks out writers, as a write does: it needs write permission.
    let lock_read_only = harness.begin(vec![testing::read_for_update("n2/x")]);
    harness.settle();
    assert!(unauthorized(&harness, lock_read_only, "n2/x"));
    let lock_mine = harness.begin(vec![testing::read_for_update("n1/mine/y")]);
    harness.settle();
    assert!(matches!(
        harness.result(lock_mine),
        Some(TxnResult::Committed { .. })
    ));
    let read_elsewhere = harness.begin(vec![testing::read("n3/x")]);
    harness.settle();
    assert!(unauthorized(&harness, read_elsewhere, "n3/x"));
    // A client with no entry at all.
    install(&mut harness, None);
    let nothing = harness.begin(vec![testing::read("n1/mine/y")]);
    harness.settle();
    assert!(unauthorized(&harness, nothing, "n1/mine/y"));
}

#[test]
fn an_execute_outside_the_permissions_is_answered_with_the_error_and_aborts_the_execution() {
    let mut harness = Harness::new(3);
    install(
        &mut harness,
        Some(Permissions {
            read_write: prefixes(&["n1/"]),
            read_only: Vec::new(),
        }),
    );
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, txn, write("n1/a", "1"))
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert_eq!(harness.nodes[0].executions().0, 1);
    harness
        .client
        .execute(harness.now, txn, write("n2/b", "1"))
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert!(
        unauthorized(&harness, txn, "n2/b"),
        "{:?}",
        harness.result(txn)
    );
    // n2 kept nothing for it; n1 released its execution when the client aborted it.
    for node in &harness.nodes {
        assert_eq!(node.executions(), (0, 0), "{}", node.id());
    }
    // A buffered write outside the permissions votes Aborted at prepare.
    let buffered = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, buffered, write("n1/c", "1"))
        .unwrap();
    harness.collect_client();
    harness.settle();
    harness
        .client
        .commit_with(harness.now, buffered, vec![write("n3/d", "1")])
        .unwrap();
    harness.collect_client();
    harness.settle();
    assert!(unauthorized(&harness, buffered, "n3/d"));
}

#[test]
fn data_nodes_are_always_allowed() {
    let cluster = cluster(3);
    let mut node = Node::new(config(1, &cluster));
    node.set_access(Some(AccessPolicy::new()));
    let descriptor = TxnDescriptor {
        txn: TxnId {
            client: NodeId(2),
            sequence: 1,
        },
        participants: vec![NodeId(1)],
        acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
        f: 1,
        start_time: Time::ZERO,
    };
    let prepare = Message::Prepare {
        descriptor,
        operations: vec![write("n1/a", "1")],
    };
    let drained = receive(&mut node, Time::ZERO, NodeId(2), vec![prepare]);
    let votes: Vec<Vote> = drained
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Voted { vote, .. } => Some(*vote),
            _ => None,
        })
        .collect();
    assert_eq!(votes, vec![Vote::Prepared]);
}

/// Replaces every Prepare addressed to `to` in the mail with a Refused back to the client.
fn refuse_prepares_to(harness: &mut Harness, to: NodeId, refusal: Refusal) -> usize {
    let mut refused = 0;
    let mail: Vec<(NodeId, Envelope)> = harness.mail.drain(..).collect();
    for (from, envelope) in mail {
        if envelope.to != to || from != CLIENT {
            harness.mail.push_back((from, envelope));
            continue;
        }
        for message in envelope.messages {
            refused += 1;
            harness.mail.push_back((
                to,
                Envelope {
                    to: CLIENT,
                    messages: vec![Message::Refused {
                        txn: message.txn(),
                        reason: refusal,
                    }],
                },
            ));
        }
    }
    refused
}

#[test]
fn a_refused_first_prepare_ends_the_transaction_at_once_and_that_node_is_never_asked_again() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    assert_eq!(
        refuse_prepares_to(&mut harness, NodeId(2), Refusal::Unauthenticated),
        1
    );
    harness.settle();
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Refused(Refusal::Unauthenticated))
    );
    // No retry ever reaches n2; n1 and the acceptors abort by recovery.
    for _ in 0..40 {
        assert_eq!(
            refuse_prepares_to(&mut harness, NodeId(2), Refusal::Unauthenticated),
            0
        );
        harness.advance(Duration::from_millis(100));
    }
    assert_eq!(harness.nodes[0].known_outcome(txn), Some(Outcome::Abort));
    assert_eq!(harness.nodes[1].known_outcome(txn), Some(Outcome::Abort));
    assert!(harness.nodes[0].store().rows().is_empty());
}

#[test]
fn a_refusal_after_a_retry_stops_prepares_to_that_node_and_is_reported_once_aborted() {
    let mut harness = Harness::new(3);
    let txn = harness.begin(vec![write("n1/a", "1"), write("n2/b", "1")]);
    // n2's first Prepare is lost; its retry is refused (it may have been the first).
    harness
        .mail
        .retain(|(_, envelope)| envelope.to != NodeId(2));
    harness.settle();
    harness.now = harness.now.saturating_add(Duration::from_secs(1));
    harness.client.handle(harness.now, Input::Timeout);
    harness.collect_client();
    assert_eq!(
        refuse_prepares_to(&mut harness, NodeId(2), Refusal::RateLimited),
        1
    );
    harness.settle();
    assert_eq!(
        harness.result(txn),
        None,
        "n2 may have voted: keep learning"
    );
    for _ in 0..60 {
        assert_eq!(
            refuse_prepares_to(&mut harness, NodeId(2), Refusal::RateLimited),
            0,
            "no Prepare goes to n2 again"
        );
        harness.advance(Duration::from_millis(100));
    }
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Refused(Refusal::RateLimited))
    );
}

#[test]
fn a_refused_execute_ends_the_interactive_transaction_and_later_calls_say_why() {
    let mut harness = Harness::new(3);
    let txn = harness.client.begin_interactive(harness.now).unwrap();
    harness
        .client
        .execute(harness.now, txn, write("n1/a", "1"))
        .unwrap();
    harness.collect_client();
    refuse_prepares_to(&mut harness, NodeId(1), Refusal::Unauthenticated);
    harness.settle();
    assert_eq!(
        harness.result(txn),
        Some(&TxnResult::Refused(Refusal::Unauthenticated))
    );
    assert_eq!(
        harness.client.execute(harness.now, txn, write("n1/b", "1")),
        Err(ExecuteError::Refused(Refusal::Unauthenticated))
    );
    assert_eq!(
        harness.client.commit(harness.now, txn),
        Err(ExecuteError::Refused(Refusal::Unauthenticated))
    );
    assert_eq!(
        ExecuteError::Refused(Refusal::RateLimited).to_string(),
        "refused: this client exceeded its rate limit; try again later"
    );
}

#[test]
fn a_data_node_counts_a_refused_and_ignores_it_and_refused_travels_on_the_wire() {
    let cluster = cluster(3);
    let mut node = Node::new(config(1, &cluster));
    let refused = Message::Refused {
        txn: TxnId::NONE,
        reason: Refusal::RateLimited,
    };
    let frame = encode(std::slice::from_ref(&refused)).unwrap();
    assert_eq!(decode(&frame).unwrap(), vec![refused.clone()]);
    assert_eq!(refused.kind(), MessageKind::Refused);
    let drained = receive(&mut node, Time::ZERO, NodeId(2), vec![refused]);
    assert_eq!(
        node.rejected_counts().get(&RejectKind::PeerRefused),
        Some(&1)
    );
    assert!(drained.records.is_empty(), "nothing is persisted");
}
