//! A frame from a peer, decoded and handed to a node, as the daemon does: first as from a
//! member (n2), then as from a client, each followed by a timeout and every persist
//! acknowledged. The node starts from a real log (committed data, decided and recovered
//! transactions), so messages meet state. Nothing a peer sends may panic a node.
#![no_main]

use dtx_fuzz::{drive, node_config, ME};
use dtx_protocol::{decode, decode_log, Input, Node, NodeId, Time};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use std::sync::OnceLock;

/// Node n1's log from the seed run (see seeds.rs).
const LOG: &[u8] = include_bytes!("../corpus/record_log_replay/log-n1");

/// A client's id as the daemon derives it (top bit set).
const CLIENT: NodeId = NodeId((1 << 63) | 5);

/// The node every input starts from, recovered once.
fn recovered() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let contents = decode_log(LOG);
        assert!(
            contents.tail_problem.is_none(),
            "the seed log decodes whole"
        );
        Node::recover(
            node_config(ME),
            Time::from_micros(1_000_000),
            contents.records,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = decode(data) else {
        return;
    };
    let mut node = recovered().clone();
    let mut now = Time::from_micros(2_000_000);
    for from in [NodeId(2), CLIENT] {
        node.handle(
            now,
            Input::Receive {
                from,
                messages: messages.clone(),
            },
        );
        drive(&mut node, now);
        now = Time::from_micros(now.as_micros().saturating_add(10_000_000));
    }
});

// Structure-aware: most mutants stay valid CBOR of the same shape (see `mutate_cbor`).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    dtx_fuzz::mutate_cbor(data, size, max_size, seed)
});
