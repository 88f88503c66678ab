//! A peer sending garbage, oversized or forged frames is rejected and logged; the node
//! keeps serving.

mod common;

use common::*;
use dtx_node::client::Client;
use dtx_node::network::{MESSAGES_PROTOCOL, STREAM_PROTOCOL};
use dtx_protocol::{
    encode, Ballot, Key, Message, NodeId, Operation, Time, TxnDescriptor, TxnId, Value, Vote,
};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, noise, request_response, tcp, yamux, StreamProtocol};
use std::io::Write;
use std::time::Duration;

/// Writes whatever bytes it is given: the attacker's codec.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Ok(Vec::new())
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&bytes).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_forged_frames_are_rejected_and_the_node_keeps_serving() {
    let cluster = start_cluster("garbage", 3, 1);
    let target = cluster.config.node_named("n1").expect("n1").clone();

    // 1. Not even a handshake: raw bytes on the TCP port.
    let address = target.address.to_string();
    let port: u16 = address
        .rsplit('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("port");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp");
    let _ = raw.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1000));
    drop(raw);

    // 2. A real libp2p peer (not in the allow-list) sending bad frames.
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(
                    MESSAGES_PROTOCOL,
                    request_response::ProtocolSupport::Outbound,
                )],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.add_peer_address(target.peer_id, target.address.clone());
    let descriptor = TxnDescriptor {
        txn: TxnId {
            client: NodeId(1 << 63 | 7),
            sequence: 1,
        },
        participants: vec![NodeId(2)],
        acceptors: vec![NodeId(2), NodeId(1), NodeId(3)],
        f: 1,
        start_time: Time(0),
    };
    let forged = encode(&[Message::Phase2a {
        descriptor,
        rm: NodeId(2),
        ballot: Ballot::ZERO,
        value: Vote::Aborted,
    }])
    .expect("encode");
    let frames: Vec<Vec<u8>> = vec![
        framed(&[dtx_protocol::message::WIRE_VERSION, 0xff, 0xfe, 0x00, 0x13]), // malformed body
        framed(&[99, 1, 2, 3]),                        // unknown wire version
        framed(&[]),                                   // empty frame
        (200u32 * 1024 * 1024).to_le_bytes().to_vec(), // claims 200 MiB: oversized
        vec![1, 2],                                    // torn length prefix
        framed(&forged),                               // a Phase2a from a non-member
    ];
    for frame in frames {
        swarm.behaviour_mut().send_request(&target.peer_id, frame);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut finished = 0;
    while finished < 6 {
        tokio::select! {
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(
                    request_response::Event::Message { .. }
                    | request_response::Event::OutboundFailure { .. },
                ) = event
                {
                    finished += 1;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The node still serves transactions, with n1 as a participant and as an acceptor.
    let client = Client::connect(&cluster.config).await.expect("connect");
    let mut txn = client.begin();
    txn.write("n1/after-garbage", "ok")
        .write("n2/after-garbage", "ok");
    txn.commit().await.expect("n1 keeps serving");
    let committed = client
        .run(vec![Operation::Read {
            key: Key::new("n1/after-garbage"),
            expected: None,
        }])
        .await
        .expect("read");
    assert_eq!(committed.reads[0].value, Some(Value::new(b"ok".to_vec())));

    let log = node_log(&cluster, "n1");
    assert!(
        log.contains("rejected an inbound frame"),
        "malformed frames are logged:\n{log}"
    );
    assert!(
        log.contains("exceeds the limit"),
        "the oversized frame is named:\n{log}"
    );
    assert!(
        log.contains("refused frames at the door"),
        "the forged Phase2a from a peer without a session never reaches the protocol:\n{log}"
    );
    assert!(cluster_is_running(cluster));
}

fn cluster_is_running(mut cluster: dtx_cli::local::LocalCluster) -> bool {
    let running = cluster.is_running("n1");
    finish(cluster);
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_stream_is_rejected_and_the_node_keeps_serving() {
    let cluster = start_cluster("garbage-stream", 3, 1);
    let target = cluster.config.node_named("n2").expect("n2").clone();
    let frames: Vec<Vec<u8>> = vec![
        framed(&[dtx_protocol::message::WIRE_VERSION, 0xff, 0xfe, 0x00, 0x13]),
        (u32::MAX).to_le_bytes().to_vec(),
        framed(&[7; 64]),
    ];
    // Each bad frame from its own connection, retried until written: the node drops the
    // stream a bad frame arrived on, and whether the connection survives that is not what
    // this test is about.
    for frame in frames {
        let mut delivered = false;
        for _ in 0..5 {
            if send_on_fresh_stream(&cluster.config, &target, &frame).await {
                delivered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(delivered, "could not deliver a frame to n2 at all");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = Client::connect(&cluster.config).await.expect("connect");
    let mut txn = client.begin();
    txn.write("n2/after-garbage", "ok")
        .write("n3/after-garbage", "ok");
    txn.commit().await.expect("n2 keeps serving");
    let log = node_log(&cluster, "n2");
    assert!(
        log.contains("rejected an inbound frame"),
        "malformed frames are logged:\n{log}"
    );
    assert!(
        log.contains("exceeds the limit"),
        "the oversized frame is named:\n{log}"
    );
    finish(cluster);
}

/// Opens a new connection to `target`, opens a session as the admin user, then a stream,
/// writes `bytes`, closes; true if written.
async fn send_on_fresh_stream(
    config: &dtx_node::config::ClusterConfig,
    target: &dtx_node::config::NodeInfo,
    bytes: &[u8],
) -> bool {
    let Ok(builder) = libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
    else {
        return false;
    };
    // The behaviour constructor cannot fail (its error type is uninhabited).
    let Ok(builder) = builder.with_behaviour(|_| libp2p_stream::Behaviour::new());
    let mut swarm = builder
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut control = swarm.behaviour().new_control();
    // The garbage comes from a client with a session (the admin user's): a peer without
    // one never gets a frame past the door (tests/trust.rs).
    let me = *swarm.local_peer_id();
    let proof = config
        .credential(None)
        .ok()
        .flatten()
        .and_then(|credential| dtx_node::auth::prove(&credential, &config.cluster_id, &me).ok());
    let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(target.peer_id)
        .addresses(vec![target.address.clone()])
        .build();
    if swarm.dial(dial).is_err() {
        return false;
    }
    let driver = tokio::spawn(async move {
        loop {
            let _ = swarm.select_next_some().await;
        }
    });
    let written = async {
        if let Some(proof) = &proof {
            dtx_node::auth::authenticate(&mut control, target.peer_id, proof)
                .await
                .ok()?;
        }
        let mut stream = control
            .open_stream(target.peer_id, STREAM_PROTOCOL)
            .await
            .ok()?;
        stream.write_all(bytes).await.ok()?;
        stream.flush().await.ok()?;
        // Give the bytes time to arrive before the connection goes away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stream.close().await;
        Some(())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), written).await;
    driver.abort();
    matches!(result, Ok(Some(())))
}
