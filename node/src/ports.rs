//! Free loopback ports for local clusters, chosen below the system's ephemeral range.
//!
//! A local cluster's ports are chosen when its `cluster.toml` is written and bound only
//! when each node starts. A port the system hands out for `bind(127.0.0.1:0)` comes from
//! the ephemeral range, the same range it draws the source port of every outgoing
//! connection from: in the gap between choosing and starting, any client connection on
//! the machine can take it, and the node then exits with "address in use" (seen in CI
//! with many test clusters running side by side). Ports below the ephemeral range are
//! never handed out implicitly, so only an explicit bind can take one; each candidate
//! is probed with a real bind and held until every port of the set is chosen.

use dtx_protocol::Rng;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};

/// The lowest port chosen (above the well-known and most registered service ports).
const LOW: u16 = 10_000;

/// Candidates tried below the ephemeral range before falling back to the system's choice.
const ATTEMPTS_MAX: usize = 512;

/// `count` distinct ports of 127.0.0.1 that none of `taken` names, each held by a bound
/// listener (drop them just before the ports are used). Drawn below the ephemeral range
/// where there is room; otherwise (or when that range is crowded) the system's choice.
pub fn reserve(count: usize, taken: &BTreeSet<u16>) -> std::io::Result<Vec<(u16, TcpListener)>> {
    let mut chosen: Vec<(u16, TcpListener)> = Vec::with_capacity(count);
    let mut seen = taken.clone();
    if let Some(high) = ephemeral_low().filter(|high| *high > LOW) {
        let span = u64::from(high - LOW);
        let mut rng = Rng::new(seed()?);
        for _attempt in 0..ATTEMPTS_MAX {
            if chosen.len() == count {
                break;
            }
            let offset = u16::try_from(rng.below(span)).unwrap_or(0);
            let port = LOW.saturating_add(offset);
            if seen.contains(&port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                seen.insert(port);
                chosen.push((port, listener));
            }
        }
    }
    let mut fallbacks = 0;
    while chosen.len() < count {
        fallbacks += 1;
        if fallbacks > ATTEMPTS_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("no {count} free ports on 127.0.0.1 in {ATTEMPTS_MAX} tries"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if seen.insert(port) {
            chosen.push((port, listener));
        }
    }
    Ok(chosen)
}

/// One free port of 127.0.0.1, released (for a server started right after, such as a
/// PostgreSQL instance).
pub fn free_port() -> std::io::Result<u16> {
    let mut ports = reserve(1, &BTreeSet::new())?;
    ports
        .pop()
        .map(|(port, _listener)| port)
        .ok_or_else(|| std::io::Error::other("no port reserved"))
}

/// The first port of the system's ephemeral range (Linux), if it can be read.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_range_low(&text)
}

fn parse_range_low(text: &str) -> Option<u16> {
    text.split_whitespace().next()?.parse().ok()
}

/// A seed from the operating system, so that two clusters initialised at once draw
/// different ports.
fn seed() -> std::io::Result<u64> {
    let bytes = crate::secret::random_bytes(8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    Ok(u64::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_held_below_the_ephemeral_range_and_avoid_taken_ones() {
        let taken: BTreeSet<u16> = (LOW..LOW + 2_000).collect();
        let ports = reserve(12, &taken).expect("reserve");
        let numbers: BTreeSet<u16> = ports.iter().map(|(port, _)| *port).collect();
        assert_eq!(numbers.len(), 12, "distinct: {numbers:?}");
        assert!(numbers.is_disjoint(&taken), "{numbers:?}");
        if let Some(high) = ephemeral_low().filter(|high| *high > LOW + 4_000) {
            assert!(
                numbers.iter().all(|port| *port < high),
                "{numbers:?} vs {high}"
            );
        }
        for (port, _listener) in &ports {
            // Held: a second bind of the same port fails while the listener lives.
            assert!(
                TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).is_err(),
                "{port}"
            );
        }
    }

    #[test]
    fn the_range_file_is_read_and_garbage_is_not_trusted() {
        assert_eq!(parse_range_low("32768\t60999\n"), Some(32768));
        assert_eq!(parse_range_low("70000 80000"), None);
        assert_eq!(parse_range_low(""), None);
        assert_eq!(parse_range_low("x y"), None);
    }
}
