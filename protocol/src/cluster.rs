//! Cluster membership, key placement and acceptor choice: pure functions every node and
//! client computes identically.

use crate::rng::stable_hash;
use crate::types::{Key, NodeId, TxnId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most data nodes a cluster may declare.
pub const MEMBERS_MAX: usize = 4096;

/// Largest F: at most this many acceptor failures tolerated.
pub const F_MAX: u32 = 16;

/// A data node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its name; it owns every key `name/...`.
    pub name: String,
}

/// Why a cluster description is invalid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Fewer data nodes than the 2F+1 acceptors a transaction needs.
    #[error("F={f} needs at least {needed} data nodes, the cluster has {members}")]
    TooFewMembers {
        /// Requested F.
        f: u32,
        /// 2F+1.
        needed: usize,
        /// Declared data nodes.
        members: usize,
    },
    /// More members than [`MEMBERS_MAX`].
    #[error("{members} data nodes exceed the limit of {MEMBERS_MAX}")]
    TooManyMembers {
        /// Declared data nodes.
        members: usize,
    },
    /// F larger than [`F_MAX`].
    #[error("F={0} exceeds the limit of {F_MAX}")]
    FTooLarge(u32),
    /// Two members share an id.
    #[error("duplicate node id {0}")]
    DuplicateId(NodeId),
    /// Two members share a name.
    #[error("duplicate node name {0:?}")]
    DuplicateName(String),
    /// A name is empty or contains '/'.
    #[error("invalid node name {0:?}: must be non-empty and contain no '/'")]
    InvalidName(String),
}

/// The declared data nodes and F.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cluster {
    members: Vec<Member>,
    f: u32,
    /// Members that own only their own `name/` namespace (service and acceptor-only
    /// nodes): left out of rendezvous placement, so that adding one never moves the owner
    /// of an existing un-namespaced key.
    #[serde(default)]
    namespace_only: BTreeSet<NodeId>,
}

impl Cluster {
    /// Validates and builds a cluster description.
    pub fn new(mut members: Vec<Member>, f: u32) -> Result<Cluster, ClusterError> {
        if f > F_MAX {
            return Err(ClusterError::FTooLarge(f));
        }
        if members.len() > MEMBERS_MAX {
            return Err(ClusterError::TooManyMembers {
                members: members.len(),
            });
        }
        let needed = 2 * f as usize + 1;
        if members.len() < needed {
            return Err(ClusterError::TooFewMembers {
                f,
                needed,
                members: members.len(),
            });
        }
        let mut names = BTreeSet::new();
        for member in &members {
            if member.name.is_empty() || member.name.contains('/') {
                return Err(ClusterError::InvalidName(member.name.clone()));
            }
            if !names.insert(member.name.clone()) {
                return Err(ClusterError::DuplicateName(member.name.clone()));
            }
        }
        members.sort_by_key(|member| member.id);
        if let Some(pair) = members.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(ClusterError::DuplicateId(pair[0].id));
        }
        Ok(Cluster {
            members,
            f,
            namespace_only: BTreeSet::new(),
        })
    }

    /// Marks `nodes` as owning only their own namespace (see [`Cluster::owner`]); ids that
    /// are not members are ignored.
    pub fn with_namespace_only(mut self, nodes: impl IntoIterator<Item = NodeId>) -> Cluster {
        self.namespace_only = nodes
            .into_iter()
            .filter(|node| self.is_member(*node))
            .collect();
        self
    }

    /// True if `node` owns only its own namespace.
    pub fn is_namespace_only(&self, node: NodeId) -> bool {
        self.namespace_only.contains(&node)
    }

    /// The data nodes, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The data nodes' ids, sorted (the targets of a heartbeat or fence round).
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|member| member.id).collect()
    }

    /// Failures tolerated per transaction.
    pub fn f(&self) -> u32 {
        self.f
    }

    /// True if `node` is a declared data node.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.members
            .binary_search_by_key(&node, |member| member.id)
            .is_ok()
    }

    /// The member called `name`.
    pub fn member_named(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// The data node that owns `key`: the node named by its `name/` prefix if there is one,
    /// else the rendezvous-hash winner over all data nodes.
    pub fn owner(&self, key: &Key) -> NodeId {
        if let Some((prefix, _)) = key.as_str().split_once('/') {
            if let Some(member) = self.member_named(prefix) {
                return member.id;
            }
        }
        let bytes = key.as_str().as_bytes();
        // Non-empty: Cluster::new requires at least one member; if every member is
        // namespace-only, all of them place.
        let all_namespace_only = self.namespace_only.len() >= self.members.len();
        self.members
            .iter()
            .filter(|member| all_namespace_only || !self.namespace_only.contains(&member.id))
            .max_by_key(|member| (stable_hash(bytes, member.id.0), member.id))
            .map(|member| member.id)
            .unwrap_or(NodeId(0))
    }

    /// The 2F+1 acceptors of a transaction: its participants first (co-located acceptors
    /// share the RM's fsync), padded by rendezvous hashing of the txn id over the other
    /// members, preferring members not in `avoid` (suspected nodes).
    pub fn choose_acceptors(
        &self,
        txn: TxnId,
        participants: &[NodeId],
        avoid: &BTreeSet<NodeId>,
    ) -> Vec<NodeId> {
        let wanted = 2 * self.f as usize + 1;
        let mut acceptors: Vec<NodeId> = participants
            .iter()
            .copied()
            .filter(|node| self.is_member(*node))
            .take(wanted)
            .collect();
        let salt = txn.client.0.rotate_left(17) ^ txn.sequence;
        let mut others: Vec<(bool, u64, NodeId)> = self
            .members
            .iter()
            .filter(|member| !acceptors.contains(&member.id))
            .map(|member| {
                (
                    avoid.contains(&member.id),
                    u64::MAX - stable_hash(&member.id.0.to_le_bytes(), salt),
                    member.id,
                )
            })
            .collect();
        others.sort();
        acceptors.extend(
            others
                .into_iter()
                .take(wanted.saturating_sub(acceptors.len()))
                .map(|(_, _, id)| id),
        );
        acceptors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(count: u64, f: u32) -> Cluster {
        let members = (1..=count)
            .map(|index| Member {
                id: NodeId(index),
                name: format!("n{index}"),
            })
            .collect();
        Cluster::new(members, f).unwrap()
    }

    #[test]
    fn named_prefix_routes_to_the_service_node() {
        let cluster = cluster(5, 1);
        assert_eq!(cluster.owner(&Key::new("n3/sku-1")), NodeId(3));
    }

    #[test]
    fn unnamed_keys_spread_over_all_nodes() {
        let cluster = cluster(5, 1);
        let owners: BTreeSet<NodeId> = (0..200)
            .map(|index| cluster.owner(&Key::new(format!("acct-{index}"))))
            .collect();
        assert_eq!(owners.len(), 5);
    }

    #[test]
    fn acceptors_are_participants_first_then_padded_and_distinct() {
        let cluster = cluster(7, 2);
        let txn = TxnId {
            client: NodeId(100),
            sequence: 3,
        };
        let acceptors = cluster.choose_acceptors(txn, &[NodeId(2), NodeId(6)], &BTreeSet::new());
        assert_eq!(acceptors.len(), 5);
        assert_eq!(&acceptors[..2], &[NodeId(2), NodeId(6)]);
        let distinct: BTreeSet<NodeId> = acceptors.iter().copied().collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn suspected_nodes_are_avoided_when_possible() {
        let cluster = cluster(5, 1);
        let txn = TxnId {
            client: NodeId(100),
            sequence: 1,
        };
        let avoid: BTreeSet<NodeId> = [NodeId(3), NodeId(4)].into_iter().collect();
        let acceptors = cluster.choose_acceptors(txn, &[NodeId(1)], &avoid);
        assert_eq!(acceptors.len(), 3);
        assert_eq!(acceptors[0], NodeId(1));
        assert!(!acceptors.contains(&NodeId(3)) && !acceptors.contains(&NodeId(4)));
    }

    #[test]
    fn too_few_members_for_f_is_an_error() {
        let members = vec![Member {
            id: NodeId(1),
            name: "a".into(),
        }];
        assert!(matches!(
            Cluster::new(members, 1),
            Err(ClusterError::TooFewMembers { .. })
        ));
    }

    #[test]
    fn a_namespace_only_member_joining_moves_no_existing_key() {
        let member = |id: u64, name: &str| Member {
            id: NodeId(id),
            name: name.to_string(),
        };
        let before = Cluster::new(vec![member(1, "n1"), member(2, "n2"), member(3, "n3")], 1)
            .expect("valid");
        let after = Cluster::new(
            vec![
                member(1, "n1"),
                member(2, "n2"),
                member(3, "n3"),
                member(4, "inventory"),
            ],
            1,
        )
        .expect("valid")
        .with_namespace_only([NodeId(4)]);
        for index in 0..2000 {
            let key = Key::new(format!("key-{index}"));
            assert_eq!(before.owner(&key), after.owner(&key), "{key}");
        }
        assert_eq!(after.owner(&Key::new("inventory/sku-1")), NodeId(4));
        assert!(after.is_namespace_only(NodeId(4)));
    }
}
