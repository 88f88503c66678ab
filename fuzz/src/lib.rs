//! Shared pieces of the dtx fuzz targets: the small fixed cluster the targets run nodes
//! in, the record framing the log-replay mutator keeps valid, and a bounded driver that
//! runs a node after recovery.
//!
//! Everything here is deterministic: a crash reproduces from its input alone.

use dtx_protocol::record::{RECORD_HEADER_BYTES, RECORD_SIZE_MAX_BYTES};
use dtx_protocol::{Cluster, Input, Member, Node, NodeConfig, NodeId, Output, Time};
use std::ops::Range;
use std::time::Duration;

/// Data nodes in the fixed cluster (F = 1: three acceptors per transaction).
pub const NODES: u64 = 3;

/// The node every target runs as.
pub const ME: NodeId = NodeId(1);

/// Rounds of [`drive`] at most: each round is a timeout and the persists it caused.
pub const DRIVE_ROUNDS_MAX: usize = 4;

/// Persists acknowledged per round at most (a replayed log can open many transactions).
pub const PERSISTS_PER_ROUND_MAX: usize = 1024;

/// The cluster `n1`, `n2`, `n3` with F = 1, as `protocol/tests/common` builds it.
pub fn cluster() -> Cluster {
    let members = (1..=NODES)
        .map(|index| Member {
            id: NodeId(index),
            name: format!("n{index}"),
        })
        .collect();
    match Cluster::new(members, 1) {
        Ok(cluster) => cluster,
        // Three members and F = 1 is a valid cluster; a change that breaks this is a
        // harness bug, reported on the first input.
        Err(error) => panic!("the fixed fuzz cluster is invalid: {error}"),
    }
}

/// The configuration of node `id` as the daemon uses it (default timeouts, limits and
/// failure detector), with a fixed seed.
pub fn node_config(id: NodeId) -> NodeConfig {
    NodeConfig::new(id, cluster(), 7)
}

/// Runs `node` a little after recovery, as the daemon would: a timeout, then a
/// `Persisted` for every persist it asks for, a few rounds, a second apart. Sends are
/// dropped (no peer answers).
pub fn drive(node: &mut Node, start: Time) {
    let mut now = start;
    for _ in 0..DRIVE_ROUNDS_MAX {
        now = now.saturating_add(Duration::from_secs(1));
        node.handle(now, Input::Timeout);
        let mut tokens = Vec::new();
        while let Some(output) = node.poll_output() {
            if let Output::Persist { token, .. } = output {
                tokens.push(token);
            }
        }
        for token in tokens.into_iter().take(PERSISTS_PER_ROUND_MAX) {
            node.handle(now, Input::Persisted { token });
            while node.poll_output().is_some() {}
        }
        while node.poll_event().is_some() {}
    }
}

/// Where the payloads of the well-framed records at the start of `log` lie (length,
/// checksum, payload; the checksum is not checked), and the offset where framing stops.
pub fn framed_payloads(log: &[u8]) -> (Vec<Range<usize>>, usize) {
    let mut payloads = Vec::new();
    let mut offset: usize = 0;
    while let Some(header) = log.get(offset..offset.saturating_add(RECORD_HEADER_BYTES)) {
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = offset + RECORD_HEADER_BYTES;
        let end = start.saturating_add(length);
        if length == 0 || length > RECORD_SIZE_MAX_BYTES || end > log.len() {
            break;
        }
        payloads.push(start..end);
        offset = end;
    }
    (payloads, offset)
}

/// Appends `payload` to `log` framed as `decode_log` reads it, checksum correct.
pub fn append_framed(log: &mut Vec<u8>, payload: &[u8]) {
    // A payload longer than u32::MAX bytes is never built here (inputs are max_len bound).
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    log.extend_from_slice(&length.to_le_bytes());
    log.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    log.extend_from_slice(payload);
}

/// Rewrites the checksum of every well-framed record at the start of `log`, so that
/// mutated payloads reach the CBOR decoder and replay instead of stopping at the CRC.
pub fn fix_checksums(log: &mut [u8]) {
    let (payloads, _) = framed_payloads(log);
    for payload in payloads {
        let checksum = crc32c::crc32c(&log[payload.clone()]);
        let header = payload.start - RECORD_HEADER_BYTES;
        log[header + 4..header + 8].copy_from_slice(&checksum.to_le_bytes());
    }
}
