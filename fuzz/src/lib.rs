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

/// Wire version byte that starts a frame (`dtx_protocol::message::WIRE_VERSION`).
const FRAME_VERSION: u8 = dtx_protocol::message::WIRE_VERSION;

/// Integers a mutated CBOR leaf may become: the edges where arithmetic on a peer's word
/// overflows (ballot rounds are `u32`, counters and ids `u64`).
const INTERESTING_INTEGERS: [i128; 12] = [
    0,
    1,
    2,
    u8::MAX as i128,
    u16::MAX as i128,
    u32::MAX as i128 - 1,
    u32::MAX as i128,
    u32::MAX as i128 + 1,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX as i128 - 1,
    u64::MAX as i128,
];

/// A structure-aware mutation of a frame (version byte, CBOR) or of bare CBOR: parses the
/// CBOR, changes one node of the tree (an integer to an edge value or a neighbour, bytes or
/// text by libFuzzer, an array element dropped, duplicated or swapped) and serializes it
/// again, so that most mutants still match the message schema and reach the code behind
/// the decoder. One mutation in four (and every input that is not CBOR) is a plain byte
/// mutation, which keeps the decoder's error paths covered. Returns the new size.
pub fn mutate_cbor(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut random = Xorshift::new(seed);
    if random.below(4) == 0 {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    }
    let prefix = usize::from(data.first() == Some(&FRAME_VERSION) && size > 0);
    let parsed = ciborium::de::from_reader_with_recursion_limit::<ciborium::Value, _>(
        &data[prefix..size],
        64,
    );
    let Ok(mut value) = parsed else {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    };
    let nodes = count_nodes(&value);
    let mut target = random.below(nodes);
    mutate_node(&mut value, &mut target, &mut random);
    let mut out = data[..prefix].to_vec();
    if ciborium::into_writer(&value, &mut out).is_err() || out.len() > max_size {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(&out);
    out.len()
}

/// Nodes in a CBOR tree (map keys not counted: field names stay valid).
fn count_nodes(value: &ciborium::Value) -> usize {
    1 + match value {
        ciborium::Value::Tag(_, inner) => count_nodes(inner),
        ciborium::Value::Array(items) => items.iter().map(count_nodes).sum(),
        ciborium::Value::Map(entries) => entries.iter().map(|(_, item)| count_nodes(item)).sum(),
        _ => 0,
    }
}

/// Mutates the node numbered `target` (pre-order, as [`count_nodes`] counts); returns
/// true once done.
fn mutate_node(value: &mut ciborium::Value, target: &mut usize, random: &mut Xorshift) -> bool {
    if *target == 0 {
        mutate_here(value, random);
        return true;
    }
    *target -= 1;
    match value {
        ciborium::Value::Tag(_, inner) => mutate_node(inner, target, random),
        ciborium::Value::Array(items) => items
            .iter_mut()
            .any(|item| mutate_node(item, target, random)),
        ciborium::Value::Map(entries) => entries
            .iter_mut()
            .any(|(_, item)| mutate_node(item, target, random)),
        _ => false,
    }
}

fn mutate_here(value: &mut ciborium::Value, random: &mut Xorshift) {
    match value {
        ciborium::Value::Integer(integer) => {
            let old = i128::from(*integer);
            let new = match random.below(4) {
                0 => old.saturating_add(1),
                1 => old.saturating_sub(1),
                2 => i128::from(random.next_u64()),
                _ => INTERESTING_INTEGERS[random.below(INTERESTING_INTEGERS.len())],
            };
            if let Ok(new) = ciborium::value::Integer::try_from(new) {
                *integer = new;
            }
        }
        ciborium::Value::Bytes(bytes) => mutate_bytes(bytes),
        ciborium::Value::Text(text) => {
            let mut bytes = text.clone().into_bytes();
            mutate_bytes(&mut bytes);
            *text = String::from_utf8_lossy(&bytes).into_owned();
        }
        ciborium::Value::Bool(flag) => *flag = !*flag,
        ciborium::Value::Array(items) if !items.is_empty() => {
            let index = random.below(items.len());
            match random.below(3) {
                0 => {
                    items.remove(index);
                }
                1 => items.insert(index, items[index].clone()),
                _ => {
                    let other = random.below(items.len());
                    items.swap(index, other);
                }
            }
        }
        ciborium::Value::Map(entries) if !entries.is_empty() => {
            let index = random.below(entries.len());
            entries.remove(index);
        }
        _ => {}
    }
}

/// Bytes of a mutated byte string at most (a key or a value; the limits refuse larger).
const MUTATED_BYTES_MAX: usize = 256;

fn mutate_bytes(bytes: &mut Vec<u8>) {
    let size = bytes.len().min(MUTATED_BYTES_MAX);
    bytes.resize(MUTATED_BYTES_MAX, 0);
    let size = libfuzzer_sys::fuzzer_mutate(bytes, size, MUTATED_BYTES_MAX);
    bytes.truncate(size);
}

/// A tiny deterministic generator seeded by libFuzzer's seed (xorshift64).
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u32) -> Xorshift {
        Xorshift(u64::from(seed) | 1 << 32)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `bound` (0 when `bound` is 0).
    fn below(&mut self, bound: usize) -> usize {
        match u64::try_from(bound) {
            Ok(0) | Err(_) => 0,
            Ok(bound) => usize::try_from(self.next_u64() % bound).unwrap_or(0),
        }
    }
}
