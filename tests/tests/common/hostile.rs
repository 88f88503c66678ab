//! A small hostile peer speaking real libp2p (TCP + Noise + Yamux, the dtx stream and
//! session protocols): it sends whatever frames a test gives it, with whatever identity
//! (fresh, a user's, a stolen member key), and collects what the node sends back.
#![allow(dead_code)]

use dtx_node::auth::{authenticate, SessionProof};
use dtx_node::network::{read_frame, Frame, ReadOutcome, STREAM_ACCEPTED, STREAM_PROTOCOL};
use dtx_protocol::{encode, Message};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use std::time::Duration;
use tokio::sync::mpsc;

/// A hostile peer with one identity.
pub struct Hostile {
    /// Its peer id.
    pub peer: PeerId,
    control: libp2p_stream::Control,
    dials: mpsc::UnboundedSender<PeerId>,
    received: mpsc::Receiver<(PeerId, Vec<Message>)>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Hostile {
    /// A peer with `keypair` that knows `targets` (peer id, address) and accepts the frames
    /// they send it.
    pub fn new(keypair: Keypair, targets: &[(PeerId, Multiaddr)]) -> Hostile {
        let peer = keypair.public().to_peer_id();
        let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp");
        let Ok(builder) = builder.with_behaviour(|_| libp2p_stream::Behaviour::new());
        let mut swarm = builder
            .with_swarm_config(|config| {
                config.with_idle_connection_timeout(Duration::from_secs(3600))
            })
            .build();
        let addresses: std::collections::HashMap<PeerId, Multiaddr> =
            targets.iter().cloned().collect();
        let control = swarm.behaviour().new_control();
        let mut accepting = swarm.behaviour().new_control();
        let (sender, received) = mpsc::channel(65_536);
        if let Ok(mut incoming) = accepting.accept(STREAM_PROTOCOL) {
            tokio::spawn(async move {
                while let Some((from, mut stream)) = incoming.next().await {
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        // Accept it as a node would (it writes this byte first).
                        if stream.write_all(&[STREAM_ACCEPTED]).await.is_err()
                            || stream.flush().await.is_err()
                        {
                            return;
                        }
                        while let ReadOutcome::Frame(Frame::Messages(messages)) =
                            read_frame(&mut stream).await
                        {
                            if sender.send((from, messages)).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        let (dials, mut dial_requests) = mpsc::unbounded_channel::<PeerId>();
        let driver = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = swarm.select_next_some() => {}
                    Some(target) = dial_requests.recv() => {
                        if let Some(address) = addresses.get(&target) {
                            // Skipped while connected or dialing (the default condition).
                            let _ = swarm.dial(
                                libp2p::swarm::dial_opts::DialOpts::peer_id(target)
                                    .addresses(vec![address.clone()])
                                    .build(),
                            );
                        }
                    }
                }
            }
        });
        Hostile {
            peer,
            control,
            dials,
            received,
            driver,
        }
    }

    /// A peer with a fresh identity, on no list.
    pub fn stranger(targets: &[(PeerId, Multiaddr)]) -> Hostile {
        Hostile::new(Keypair::generate_ed25519(), targets)
    }

    /// Presents a session proof to `node`.
    pub async fn authenticate(
        &mut self,
        node: PeerId,
        proof: &SessionProof,
    ) -> Result<String, dtx_node::auth::AuthError> {
        self.connect(node).await;
        authenticate(&mut self.control, node, proof).await
    }

    /// Dials `node` (if not connected) and gives the connection a moment.
    pub async fn connect(&mut self, node: PeerId) {
        let _ = self.dials.send(node);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Opens a stream to `node` and writes raw bytes on it.
    pub async fn send_raw(&mut self, node: PeerId, bytes: &[u8]) -> bool {
        self.connect(node).await;
        let written = async {
            let mut stream = self.control.open_stream(node, STREAM_PROTOCOL).await.ok()?;
            stream.write_all(bytes).await.ok()?;
            stream.flush().await.ok()?;
            Some(stream)
        };
        match tokio::time::timeout(Duration::from_secs(10), written).await {
            Ok(Some(stream)) => {
                // Leave it open a moment so the bytes are read before it closes.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    drop(stream);
                });
                true
            }
            _ => false,
        }
    }

    /// Sends `messages` to `node` as one frame on a new stream.
    pub async fn send(&mut self, node: PeerId, messages: &[Message]) -> bool {
        self.send_raw(node, &framed(&encode(messages).expect("encode")))
            .await
    }

    /// Opens one stream to `node` and writes `frames` on it back to back, as fast as the
    /// connection takes them, until `until`; returns frames written.
    pub async fn flood(
        &mut self,
        node: PeerId,
        frames: &mut (dyn FnMut(u64) -> Vec<u8> + Send),
        until: tokio::time::Instant,
    ) -> u64 {
        let mut written = 0;
        while tokio::time::Instant::now() < until {
            let _ = self.dials.send(node);
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_secs(2),
                self.control.open_stream(node, STREAM_PROTOCOL),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while tokio::time::Instant::now() < until {
                let bytes = frames(written);
                match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&bytes)).await {
                    Ok(Ok(())) => written += 1,
                    _ => break,
                }
            }
        }
        written
    }

    /// Messages received within `patience`.
    pub async fn received(&mut self, patience: Duration) -> Vec<(PeerId, Message)> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + patience;
        while let Ok(Some((from, messages))) =
            tokio::time::timeout_at(deadline, self.received.recv()).await
        {
            all.extend(messages.into_iter().map(|message| (from, message)));
        }
        all
    }
}

/// A frame as the wire carries it: u32 little-endian length, then the bytes.
pub fn framed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}
