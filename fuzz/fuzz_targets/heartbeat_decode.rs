//! Gossip from a peer: a `Message::Gossip` frame, or heartbeats as bare CBOR, decoded and
//! merged into a failure detector, then handed to a node as gossip from a member. Nothing
//! may panic, and the detector's own digest must encode and decode again.
#![no_main]

use dtx_fuzz::{node_config, ME};
use dtx_protocol::{
    decode, encode, DetectorConfig, FailureDetector, Heartbeat, Input, Message, Node, NodeId, Role,
    Time,
};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use std::time::Duration;

/// Heartbeats merged per round (a digest's size in a small cluster).
const HEARTBEATS_PER_MERGE: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut heartbeats: Vec<Heartbeat> = Vec::new();
    if let Ok(messages) = decode(data) {
        for message in messages {
            if let Message::Gossip { heartbeats: more } = message {
                heartbeats.extend(more);
            }
        }
    }
    if let Ok(bare) = ciborium::de::from_reader_with_recursion_limit::<Vec<Heartbeat>, _>(data, 64)
    {
        heartbeats.extend(bare);
    }
    if heartbeats.is_empty() {
        return;
    }
    let mut detector = FailureDetector::new(
        DetectorConfig::default(),
        ME,
        Role::DataNode,
        1,
        7,
        Time::ZERO,
    );
    let candidates = [NodeId(2), NodeId(3)];
    let mut now = Time::ZERO;
    for chunk in heartbeats.chunks(HEARTBEATS_PER_MERGE) {
        now = now.saturating_add(Duration::from_millis(250));
        // The first heartbeat is the sender's own (as in a real digest), the rest relayed:
        // both paths of the relay rules get the fuzzer's input.
        let from = chunk.first().map_or(NodeId(2), |heartbeat| heartbeat.node);
        detector.merge(now, from, chunk);
        for heartbeat in chunk {
            let _ = detector.phi(now, heartbeat.node);
            let _ = detector.addresses(heartbeat.node);
        }
        let _ = detector.suspected(now);
        let _ = detector.view(now);
        let _ = detector.left();
        if let Some((_, digest)) = detector.round(now, &candidates) {
            let gossip = [Message::Gossip { heartbeats: digest }];
            match encode(&gossip) {
                Ok(frame) => {
                    if let Err(error) = decode(&frame) {
                        panic!("our own digest does not decode: {error}");
                    }
                }
                Err(error) => panic!("our own digest does not encode: {error}"),
            }
        }
    }
    // The node's gossip path (roles Draining and Left change what it does).
    let mut node = Node::new(node_config(ME));
    node.handle(
        now,
        Input::Receive {
            from: NodeId(2),
            messages: vec![Message::Gossip { heartbeats }],
        },
    );
    node.handle(now.saturating_add(Duration::from_secs(1)), Input::Timeout);
    while node.poll_output().is_some() {}
});

// Structure-aware: most mutants stay valid CBOR of the same shape (see `mutate_cbor`).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    dtx_fuzz::mutate_cbor(data, size, max_size, seed)
});
