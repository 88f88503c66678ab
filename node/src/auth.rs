//! Client sessions: how a client process proves to a data node that it acts for a user of
//! `users.toml`, and the node's table of proven sessions.
//!
//! Every client process runs with a fresh libp2p identity (two processes of one user must
//! never share a peer id: the protocol derives a client's id, and so its transaction ids,
//! from it). Noise authenticates that identity on every connection. To bind it to a user,
//! the client opens a stream on [`AUTH_PROTOCOL`] and sends a [`SessionProof`]: the user's
//! public key and its signature over `"dtx-session-v1"`, the cluster id and the process's
//! peer id. The node checks that the key is a user's and the signature good, records the
//! session (peer id → user) and answers. A proof is worthless to anyone else: it names the
//! peer id whose private key Noise demands, and the cluster it was made for.
//!
//! Sessions live as long as the peer has a connection, at most [`SESSIONS_MAX`] at once,
//! and end at once when the user is removed from `users.toml`.

use crate::users::{Credential, User, Users};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::PublicKey;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The stream protocol of session proofs.
pub const AUTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/dtx/auth/1");

/// Largest proof or answer read (bytes).
pub const AUTH_MESSAGE_BYTES_MAX: usize = 4096;

/// A proof must arrive and its answer leave within this time.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Proofs checked at once at most; more streams are dropped unread.
pub const AUTH_HANDSHAKES_MAX: usize = 64;

/// Client sessions a node holds at most; beyond it new proofs are refused.
pub const SESSIONS_MAX: usize = 65_536;

/// The domain separator of the signed session message.
const SESSION_CONTEXT: &[u8] = b"dtx-session-v1\0";

/// A client's proof that its peer id acts for `user`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionProof {
    /// The user's name.
    pub user: String,
    /// The user's public key (libp2p protobuf encoding).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// The user's signature over [`session_message`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A node's answer to a proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAnswer {
    /// The session is open.
    Accepted {
        /// The user it acts for.
        user: String,
    },
    /// It is not, and why.
    Refused {
        /// A text for the client's user.
        reason: String,
    },
}

/// Why a session could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The user is not in `users.toml`.
    #[error("user {0:?} is not a user of this cluster (see `dtx user add`)")]
    UnknownUser(String),
    /// The key is not the user's.
    #[error("the key presented for user {0:?} is not the one in users.toml")]
    WrongKey(String),
    /// The signature does not verify.
    #[error("the session signature does not verify")]
    BadSignature,
    /// The node holds too many sessions.
    #[error("the node holds {SESSIONS_MAX} client sessions; try again later")]
    Full,
    /// Bytes that are no proof or answer.
    #[error("malformed session message: {0}")]
    Malformed(String),
    /// The node refused, saying why.
    #[error("refused by {node}: {reason}")]
    Refused {
        /// The node.
        node: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The stream failed or timed out.
    #[error("session handshake with {node} failed: {message}")]
    Transport {
        /// The node.
        node: PeerId,
        /// What failed.
        message: String,
    },
    /// The user's key could not sign.
    #[error("cannot sign the session proof: {0}")]
    Signing(String),
}

/// The bytes a user's key signs to let `peer` act for it in cluster `cluster_id`.
pub fn session_message(cluster_id: &str, peer: &PeerId) -> Vec<u8> {
    let mut message = Vec::with_capacity(SESSION_CONTEXT.len() + cluster_id.len() + 40);
    message.extend_from_slice(SESSION_CONTEXT);
    message.extend_from_slice(cluster_id.as_bytes());
    message.push(0);
    message.extend_from_slice(&peer.to_bytes());
    message
}

/// Makes the proof that `peer` (this process) acts for the credential's user.
pub fn prove(
    credential: &Credential,
    cluster_id: &str,
    peer: &PeerId,
) -> Result<SessionProof, AuthError> {
    let signature = credential
        .keypair
        .sign(&session_message(cluster_id, peer))
        .map_err(|error| AuthError::Signing(error.to_string()))?;
    Ok(SessionProof {
        user: credential.user.clone(),
        public_key: credential.keypair.public().encode_protobuf(),
        signature,
    })
}

/// Checks a proof presented by `peer` against `users`; returns the user it acts for.
pub fn verify(
    proof: &SessionProof,
    cluster_id: &str,
    peer: &PeerId,
    users: &Users,
) -> Result<User, AuthError> {
    let user = users
        .named(&proof.user)
        .ok_or_else(|| AuthError::UnknownUser(proof.user.clone()))?;
    let public_key = PublicKey::try_decode_protobuf(&proof.public_key)
        .map_err(|error| AuthError::Malformed(format!("public key: {error}")))?;
    if public_key.to_peer_id() != user.user_id {
        return Err(AuthError::WrongKey(proof.user.clone()));
    }
    if !public_key.verify(&session_message(cluster_id, peer), &proof.signature) {
        return Err(AuthError::BadSignature);
    }
    Ok(user.clone())
}

/// Who may use a node, shared by the event loop (which updates it) and the tasks that
/// check proofs and read frames (which consult it).
#[derive(Debug)]
pub struct Gate {
    cluster_id: String,
    /// The data nodes (the cluster's allow-list of members).
    members: RwLock<HashSet<PeerId>>,
    /// `None`: insecure mode, every peer is served as an anonymous client.
    users: RwLock<Option<Arc<Users>>>,
    sessions: RwLock<HashMap<PeerId, Arc<User>>>,
}

/// What a peer is to a node, for the frames it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A data node of the cluster.
    Member,
    /// A client with a session (or any peer, in insecure mode: `None`).
    Client(Option<Arc<User>>),
    /// A peer with no session on a node that requires one.
    Unauthenticated,
}

impl Gate {
    /// A gate for cluster `cluster_id`; `users` `None` is insecure mode.
    pub fn new(cluster_id: String, users: Option<Users>) -> Gate {
        Gate {
            cluster_id,
            members: RwLock::new(HashSet::new()),
            users: RwLock::new(users.map(Arc::new)),
            sessions: RwLock::new(HashMap::new()),
        }
    }

    /// True in insecure mode.
    pub fn is_insecure(&self) -> bool {
        read(&self.users).is_none()
    }

    /// The users file in force (`None` in insecure mode).
    pub fn users(&self) -> Option<Arc<Users>> {
        read(&self.users).clone()
    }

    /// Replaces the users (after `users.toml` changed). Sessions of users that are gone
    /// end; sessions of users whose permissions changed take the new ones. Returns the
    /// peers whose sessions ended.
    pub fn set_users(&self, users: Users) -> Vec<PeerId> {
        let mut ended = Vec::new();
        let mut sessions = write(&self.sessions);
        sessions.retain(|peer, user| match users.named(&user.name) {
            Some(now) if now.user_id == user.user_id => {
                if **user != *now {
                    *user = Arc::new(now.clone());
                }
                true
            }
            _ => {
                ended.push(*peer);
                false
            }
        });
        *write(&self.users) = Some(Arc::new(users));
        ended
    }

    /// A gate for a client process: its data nodes are members, every other peer is
    /// unauthenticated (a client takes frames from data nodes only).
    pub fn for_client(members: impl IntoIterator<Item = PeerId>) -> Gate {
        let gate = Gate::new(String::new(), Some(Users::default()));
        gate.set_members(members);
        gate
    }

    /// Replaces the set of data nodes.
    pub fn set_members(&self, members: impl IntoIterator<Item = PeerId>) {
        *write(&self.members) = members.into_iter().collect();
    }

    /// True if `peer` is a data node.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        read(&self.members).contains(peer)
    }

    /// What `peer` is now.
    pub fn standing(&self, peer: &PeerId) -> Standing {
        if self.is_member(peer) {
            return Standing::Member;
        }
        if self.is_insecure() {
            return Standing::Client(read(&self.sessions).get(peer).cloned());
        }
        match read(&self.sessions).get(peer) {
            Some(user) => Standing::Client(Some(Arc::clone(user))),
            None => Standing::Unauthenticated,
        }
    }

    /// The session of `peer`, if it has one.
    pub fn session(&self, peer: &PeerId) -> Option<Arc<User>> {
        read(&self.sessions).get(peer).cloned()
    }

    /// Ends the session of `peer` (its last connection closed).
    pub fn end(&self, peer: &PeerId) -> bool {
        write(&self.sessions).remove(peer).is_some()
    }

    /// Every open session (peer and user).
    pub fn all_sessions(&self) -> Vec<(PeerId, Arc<User>)> {
        read(&self.sessions)
            .iter()
            .map(|(peer, user)| (*peer, Arc::clone(user)))
            .collect()
    }

    /// Sessions open.
    pub fn sessions(&self) -> usize {
        read(&self.sessions).len()
    }

    /// Checks `proof` from `peer` and opens its session.
    pub fn admit(&self, peer: PeerId, proof: &SessionProof) -> Result<Arc<User>, AuthError> {
        let user = match self.users() {
            Some(users) => verify(proof, &self.cluster_id, &peer, &users)?,
            // Insecure mode: a proof is not checked against any list, but the signature
            // still has to be the named key's.
            None => anonymous_user(proof, &self.cluster_id, &peer)?,
        };
        let user = Arc::new(user);
        let mut sessions = write(&self.sessions);
        if sessions.len() >= SESSIONS_MAX && !sessions.contains_key(&peer) {
            return Err(AuthError::Full);
        }
        sessions.insert(peer, Arc::clone(&user));
        Ok(user)
    }
}

/// In insecure mode, a proof's user with every permission (its signature checked).
fn anonymous_user(
    proof: &SessionProof,
    cluster_id: &str,
    peer: &PeerId,
) -> Result<User, AuthError> {
    let public_key = PublicKey::try_decode_protobuf(&proof.public_key)
        .map_err(|error| AuthError::Malformed(format!("public key: {error}")))?;
    if !public_key.verify(&session_message(cluster_id, peer), &proof.signature) {
        return Err(AuthError::BadSignature);
    }
    Ok(User {
        name: proof.user.clone(),
        user_id: public_key.to_peer_id(),
        read_write: vec![String::new()],
        read_only: Vec::new(),
        key_file: None,
    })
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned lock only means a task panicked mid-update; the data stays usable.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves session proofs on `incoming` (a node's [`AUTH_PROTOCOL`] streams) until the
/// swarm stops.
pub async fn serve(mut incoming: libp2p_stream::IncomingStreams, gate: Arc<Gate>) {
    let permits = Arc::new(Semaphore::new(AUTH_HANDSHAKES_MAX));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "too many session handshakes at once; stream dropped");
            continue;
        };
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(AUTH_TIMEOUT, answer(peer, stream, &gate))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "session handshake timed out");
            }
        });
    }
}

async fn answer(peer: PeerId, mut stream: libp2p::Stream, gate: &Gate) {
    let answer = match read_message::<SessionProof>(&mut stream).await {
        Ok(proof) => match gate.admit(peer, &proof) {
            Ok(user) => {
                tracing::info!(%peer, user = %user.name, "client session opened");
                SessionAnswer::Accepted {
                    user: user.name.clone(),
                }
            }
            Err(error) => {
                tracing::warn!(%peer, user = %proof.user, %error, "client session refused");
                SessionAnswer::Refused {
                    reason: error.to_string(),
                }
            }
        },
        Err(message) => SessionAnswer::Refused {
            reason: format!("malformed session proof: {message}"),
        },
    };
    if let Err(error) = write_message(&mut stream, &answer).await {
        tracing::debug!(%peer, %error, "cannot answer a session proof");
    }
}

/// Presents `proof` to the data node `node` over `control` and waits for its answer.
pub async fn authenticate(
    control: &mut libp2p_stream::Control,
    node: PeerId,
    proof: &SessionProof,
) -> Result<String, AuthError> {
    let transport = |message: String| AuthError::Transport { node, message };
    let handshake = async {
        let mut stream = control
            .open_stream(node, AUTH_PROTOCOL)
            .await
            .map_err(|error| transport(error.to_string()))?;
        write_message(&mut stream, proof)
            .await
            .map_err(|error| transport(error.to_string()))?;
        let answer: SessionAnswer = read_message(&mut stream).await.map_err(transport)?;
        let _ = stream.close().await;
        match answer {
            SessionAnswer::Accepted { user } => Ok(user),
            SessionAnswer::Refused { reason } => Err(AuthError::Refused { node, reason }),
        }
    };
    tokio::time::timeout(AUTH_TIMEOUT, handshake)
        .await
        .map_err(|_| transport("timed out".to_string()))?
}

async fn write_message<T: Serialize>(
    stream: &mut libp2p::Stream,
    message: &T,
) -> std::io::Result<()> {
    let mut body = Vec::new();
    ciborium::into_writer(message, &mut body)
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    if body.len() > AUTH_MESSAGE_BYTES_MAX {
        return Err(std::io::Error::other("session message too large"));
    }
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_message<T: serde::de::DeserializeOwned>(
    stream: &mut libp2p::Stream,
) -> Result<T, String> {
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|error| error.to_string())?;
    let length = u32::from_le_bytes(length) as usize;
    if length > AUTH_MESSAGE_BYTES_MAX {
        return Err(format!(
            "{length} bytes exceed the limit of {AUTH_MESSAGE_BYTES_MAX}"
        ));
    }
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    ciborium::de::from_reader_with_recursion_limit(body.as_slice(), 16)
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::add_user;
    use libp2p::identity::Keypair;

    fn users_with(name: &str) -> (std::path::PathBuf, Users) {
        let dir = std::env::temp_dir().join(format!("dtx-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        add_user(&path, name, vec!["n1/".into()], vec![]).unwrap();
        let users = Users::load(&path).unwrap();
        (path, users)
    }

    #[test]
    fn a_proof_opens_a_session_only_for_its_peer_its_cluster_and_its_users_key() {
        let (path, users) = users_with("alice");
        let credential = Credential::load(&path, "alice").unwrap();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let other_peer = Keypair::generate_ed25519().public().to_peer_id();
        let proof = prove(&credential, "cluster-a", &peer).unwrap();
        assert_eq!(
            verify(&proof, "cluster-a", &peer, &users).unwrap().name,
            "alice"
        );
        assert_eq!(
            verify(&proof, "cluster-a", &other_peer, &users),
            Err(AuthError::BadSignature),
            "a stolen proof is useless to another peer"
        );
        assert_eq!(
            verify(&proof, "cluster-b", &peer, &users),
            Err(AuthError::BadSignature),
            "or in another cluster"
        );
        let stranger = Credential {
            user: "alice".into(),
            keypair: Keypair::generate_ed25519(),
        };
        let forged = prove(&stranger, "cluster-a", &peer).unwrap();
        assert_eq!(
            verify(&forged, "cluster-a", &peer, &users),
            Err(AuthError::WrongKey("alice".into()))
        );
        let unknown = Credential {
            user: "mallory".into(),
            ..stranger
        };
        let proof = prove(&unknown, "cluster-a", &peer).unwrap();
        assert!(matches!(
            verify(&proof, "cluster-a", &peer, &users),
            Err(AuthError::UnknownUser(_))
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn removing_a_user_ends_its_sessions() {
        let (path, users) = users_with("bob");
        let credential = Credential::load(&path, "bob").unwrap();
        let gate = Gate::new("c".into(), Some(users));
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(gate.standing(&peer), Standing::Unauthenticated);
        let proof = prove(&credential, "c", &peer).unwrap();
        gate.admit(peer, &proof).unwrap();
        assert!(matches!(gate.standing(&peer), Standing::Client(Some(_))));
        crate::users::remove_user(&path, "bob").unwrap();
        let ended = gate.set_users(Users::load(&path).unwrap());
        assert_eq!(ended, vec![peer]);
        assert_eq!(gate.standing(&peer), Standing::Unauthenticated);
        assert!(gate.admit(peer, &proof).is_err(), "and it cannot come back");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
