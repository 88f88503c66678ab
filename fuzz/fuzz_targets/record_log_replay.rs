//! A log from disk: `decode_log` must not panic on any bytes, and a node recovered from
//! whatever records it yields, then driven a little (a timeout, every persist
//! acknowledged), must not panic either. A checksum protects against torn writes and
//! bit rot, not against hostile or buggy writers, so replay must hold for CRC-valid
//! records of any content.
//!
//! Random bytes almost never carry a valid CRC32C, so a custom mutator keeps the framing
//! valid: it mutates one record's payload at a time (or the whole input) and rewrites
//! lengths and checksums, leaving a checksum wrong now and then so that the
//! corruption paths stay covered. Saved inputs are real log bytes: a crash reproduces
//! from the file alone, by `decode_log` and `Node::recover`.
#![no_main]

use dtx_fuzz::{append_framed, drive, fix_checksums, framed_payloads, node_config, ME};
use dtx_protocol::{decode_log, Node, Time};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    let contents = decode_log(data);
    assert!(contents.valid_length_bytes <= data.len());
    let now = Time::from_micros(1_000_000);
    let mut node = Node::recover(node_config(ME), now, contents.records);
    drive(&mut node, now);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mutated = mutate_one_record(&data[..size], max_size, seed);
    match mutated {
        Some(log) if log.len() <= max_size => {
            data[..log.len()].copy_from_slice(&log);
            log.len()
        }
        _ => {
            // Not framed (or it would not fit): mutate the bytes as they are.
            let size = libfuzzer_sys::fuzzer_mutate(data, size, max_size);
            if !seed.is_multiple_of(16) {
                fix_checksums(&mut data[..size]);
            }
            size
        }
    }
});

/// The log with one record's payload mutated by libFuzzer (or, by `seed`, one record
/// dropped or duplicated), framed again with correct lengths and checksums; `None` when
/// `log` holds no framed record or the seed picks a whole-input mutation.
fn mutate_one_record(log: &[u8], max_size: usize, seed: u32) -> Option<Vec<u8>> {
    let (payloads, framed_end) = framed_payloads(log);
    if payloads.is_empty() || seed.is_multiple_of(8) {
        return None;
    }
    let chosen = (seed >> 3) as usize % payloads.len();
    let mut out = Vec::with_capacity(max_size);
    for (index, payload) in payloads.iter().enumerate() {
        let bytes = &log[payload.clone()];
        if index != chosen {
            append_framed(&mut out, bytes);
            continue;
        }
        match (seed >> 16) % 16 {
            // Drop the record.
            0 => {}
            // Duplicate it (replay of a record twice: a retried append).
            1 => {
                append_framed(&mut out, bytes);
                append_framed(&mut out, bytes);
            }
            _ => {
                let room = max_size
                    .saturating_sub(log.len() - bytes.len())
                    .max(bytes.len());
                let mut buffer = bytes.to_vec();
                buffer.resize(room, 0);
                let length = libfuzzer_sys::fuzzer_mutate(&mut buffer, bytes.len(), room);
                if length > 0 {
                    append_framed(&mut out, &buffer[..length]);
                }
            }
        }
    }
    // Whatever followed the framed records (a torn tail) stays.
    out.extend_from_slice(&log[framed_end..]);
    Some(out)
}
