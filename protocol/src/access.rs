//! Authorization by key prefix: which keys each client may read or write.
//!
//! A pure policy. The daemon authenticates peers (transport identities) and installs the
//! policy with [`crate::Node::set_access`]; the node consults it for every operation a
//! client asks it to run (Prepare, Execute, and the writes buffered until prepare). Data
//! nodes are not in the policy: their messages are always allowed (they run the protocol,
//! they do not read or write keys on anyone's behalf but their clients').

use crate::types::{Key, NodeId};
use std::collections::BTreeMap;

/// Clients an [`AccessPolicy`] holds at most.
pub const ACCESS_CLIENTS_MAX: usize = 100_000;

/// Key prefixes one client may use. An empty prefix matches every key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// Prefixes of keys the client may read and write (write, update, delete).
    pub read_write: Vec<Key>,
    /// Prefixes of keys the client may only read.
    pub read_only: Vec<Key>,
}

impl Permissions {
    /// Every key, read and write.
    pub fn everything() -> Permissions {
        Permissions {
            read_write: vec![Key::new("")],
            read_only: Vec::new(),
        }
    }

    /// True if the client may read `key`.
    pub fn allows_read(&self, key: &Key) -> bool {
        matches_any(&self.read_write, key) || matches_any(&self.read_only, key)
    }

    /// True if the client may write, update or delete `key`.
    pub fn allows_write(&self, key: &Key) -> bool {
        matches_any(&self.read_write, key)
    }
}

fn matches_any(prefixes: &[Key], key: &Key) -> bool {
    prefixes
        .iter()
        .any(|prefix| key.as_str().starts_with(prefix.as_str()))
}

/// Why a client could not be added to an [`AccessPolicy`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessInsertError {
    /// The policy holds [`ACCESS_CLIENTS_MAX`] clients already.
    #[error("the access policy holds {ACCESS_CLIENTS_MAX} clients already")]
    Full,
}

/// The permissions of every client a node serves. A client with no entry may do nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessPolicy {
    clients: BTreeMap<NodeId, Permissions>,
}

impl AccessPolicy {
    /// A policy that allows no client anything.
    pub fn new() -> AccessPolicy {
        AccessPolicy::default()
    }

    /// Sets `client`'s permissions (replacing any it had). Past [`ACCESS_CLIENTS_MAX`]
    /// clients a new one is refused; replacing an existing entry always works.
    pub fn insert(
        &mut self,
        client: NodeId,
        permissions: Permissions,
    ) -> Result<(), AccessInsertError> {
        if self.clients.len() >= ACCESS_CLIENTS_MAX && !self.clients.contains_key(&client) {
            return Err(AccessInsertError::Full);
        }
        self.clients.insert(client, permissions);
        Ok(())
    }

    /// Removes `client` (revocation); returns its permissions if it had any.
    pub fn remove(&mut self, client: NodeId) -> Option<Permissions> {
        self.clients.remove(&client)
    }

    /// `client`'s permissions, if it has an entry.
    pub fn get(&self, client: NodeId) -> Option<&Permissions> {
        self.clients.get(&client)
    }

    /// Clients with an entry.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True if no client has an entry.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
    use super::*;

    fn permissions(read_write: &[&str], read_only: &[&str]) -> Permissions {
        Permissions {
            read_write: read_write.iter().map(|prefix| Key::new(*prefix)).collect(),
            read_only: read_only.iter().map(|prefix| Key::new(*prefix)).collect(),
        }
    }

    #[test]
    fn prefixes_grant_reads_and_writes_and_the_empty_prefix_grants_everything() {
        let app = permissions(&["n1/app/"], &["n2/"]);
        assert!(app.allows_write(&Key::new("n1/app/x")));
        assert!(app.allows_read(&Key::new("n1/app/x")));
        assert!(!app.allows_write(&Key::new("n1/other")));
        assert!(!app.allows_read(&Key::new("n1/other")));
        assert!(app.allows_read(&Key::new("n2/x")));
        assert!(!app.allows_write(&Key::new("n2/x")));
        let all = Permissions::everything();
        assert!(all.allows_write(&Key::new("anything")) && all.allows_read(&Key::new("")));
        assert!(!Permissions::default().allows_read(&Key::new("x")));
    }

    #[test]
    fn the_policy_is_bounded_but_entries_can_always_be_replaced() {
        let mut policy = AccessPolicy::new();
        for client in 0..ACCESS_CLIENTS_MAX as u64 {
            policy
                .insert(NodeId(client), Permissions::default())
                .unwrap();
        }
        assert_eq!(
            policy.insert(NodeId(u64::MAX), Permissions::default()),
            Err(AccessInsertError::Full)
        );
        assert!(policy.insert(NodeId(5), Permissions::everything()).is_ok());
        assert_eq!(policy.get(NodeId(5)), Some(&Permissions::everything()));
        assert!(policy.remove(NodeId(5)).is_some());
        assert!(policy
            .insert(NodeId(u64::MAX), Permissions::default())
            .is_ok());
        assert_eq!(policy.len(), ACCESS_CLIENTS_MAX);
    }
}
