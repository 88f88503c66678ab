//! Writes the seed corpus of every fuzz target into `corpus/<target>/` from real traffic:
//! three data nodes and a client (the protocol crate's own state machines) run a one-shot
//! transaction, an interactive one and one whose client vanishes mid-prepare (recovery);
//! every frame sent is a `frame_decode` and `message_handle` seed, every node's log (and
//! its checkpoint) a `record_log_replay` seed, gossip frames and bare heartbeats
//! `heartbeat_decode` seeds, and cluster files like `dtx init` writes `config_parse` seeds.
//!
//! Deterministic (fixed seeds and keys): running it again rewrites the same files.
//! Run from `fuzz/`: `cargo run --release --example seeds`.

use dtx_fuzz::{cluster, node_config, NODES};
use dtx_protocol::{
    encode, encode_record, Client, ClientConfig, Envelope, FailureDetector, Input, Key, Message,
    Node, NodeId, Operation, Output, Record, Role, Time, Value,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

/// The client's id (client ids have the top bit set in the daemon; any non-member works).
const CLIENT: NodeId = NodeId(100);

/// Seeds per target at most: a handful of small inputs, not a corpus dump.
const SEEDS_PER_TARGET_MAX: usize = 12;

/// Message deliveries per run at most (a livelock in the harness ends here).
const DELIVERIES_MAX: usize = 10_000;

struct Run {
    now: Time,
    nodes: Vec<Node>,
    logs: Vec<Vec<Record>>,
    client: Client,
    mail: VecDeque<(NodeId, Envelope)>,
    /// One frame per message kind (the first seen), then per kind and size.
    frames: BTreeMap<String, Vec<u8>>,
    /// Messages from the client to this node are lost (the client "dies" mid-prepare).
    lost_to: Option<NodeId>,
}

impl Run {
    fn new() -> Run {
        let cluster = cluster();
        Run {
            now: Time::ZERO,
            nodes: (1..=NODES)
                .map(|index| Node::new(node_config(NodeId(index))))
                .collect(),
            logs: vec![Vec::new(); NODES as usize],
            client: Client::new(ClientConfig {
                detector: None,
                ..ClientConfig::new(CLIENT, cluster, 1)
            }),
            mail: VecDeque::new(),
            frames: BTreeMap::new(),
            lost_to: None,
        }
    }

    fn collect_client(&mut self) {
        while let Some(envelope) = self.client.poll_output() {
            self.mail.push_back((CLIENT, envelope));
        }
        while self.client.poll_event().is_some() {}
        while self.client.poll_executed().is_some() {}
    }

    fn collect_node(&mut self, index: usize) {
        let now = self.now;
        while let Some(output) = self.nodes[index].poll_output() {
            match output {
                Output::Persist { token, records } => {
                    self.logs[index].extend(records);
                    self.nodes[index].handle(now, Input::Persisted { token });
                }
                Output::Send(envelope) => self.mail.push_back((self.nodes[index].id(), envelope)),
                Output::Resource(_) => {} // built-in store
            }
        }
        while self.nodes[index].poll_event().is_some() {}
    }

    fn settle(&mut self) {
        for _ in 0..DELIVERIES_MAX {
            let Some((from, envelope)) = self.mail.pop_front() else {
                return;
            };
            self.keep_frame(&envelope.messages);
            if from == CLIENT && Some(envelope.to) == self.lost_to {
                continue;
            }
            let input = Input::Receive {
                from,
                messages: envelope.messages,
            };
            if envelope.to == CLIENT {
                self.client.handle(self.now, input);
                self.collect_client();
            } else if let Some(index) = self.index_of(envelope.to) {
                self.nodes[index].handle(self.now, input);
                self.collect_node(index);
            }
        }
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        let index = usize::try_from(node.0.checked_sub(1)?).ok()?;
        (index < self.nodes.len()).then_some(index)
    }

    fn keep_frame(&mut self, messages: &[Message]) {
        let Some(first) = messages.first() else {
            return;
        };
        let Ok(frame) = encode(messages) else {
            return;
        };
        let kind = format!("{:?}", first.kind()).to_lowercase();
        self.frames.entry(kind).or_insert(frame);
    }

    fn advance(&mut self, duration: Duration) {
        self.now = self.now.saturating_add(duration);
        for index in 0..self.nodes.len() {
            if self.nodes[index]
                .poll_timeout()
                .is_some_and(|due| due <= self.now)
            {
                self.nodes[index].handle(self.now, Input::Timeout);
                self.collect_node(index);
            }
        }
        if self
            .client
            .poll_timeout()
            .is_some_and(|due| due <= self.now)
        {
            self.client.handle(self.now, Input::Timeout);
            self.collect_client();
        }
        self.settle();
    }

    fn log_bytes(&self, index: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in &self.logs[index] {
            if let Err(error) = encode_record(record, &mut bytes) {
                panic!("a record the node wrote does not encode: {error}");
            }
        }
        bytes
    }
}

fn write(key: &str, value: &str) -> Operation {
    Operation::Write {
        key: Key::new(key),
        value: Value::new(value.as_bytes().to_vec()),
    }
}

fn read(key: &str) -> Operation {
    Operation::Read {
        key: Key::new(key),
        expected: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();

    // A one-shot commit, an interactive transaction, then a transaction whose Prepare to
    // n3 is lost: n1 and n2 time out and lead recovery (Phase1a/1b, Phase2a at ballot > 0).
    let mut run = Run::new();
    run.client.begin(
        run.now,
        vec![write("n1/a", "1"), write("n2/b", "2"), read("n3/c")],
    )?;
    run.collect_client();
    run.settle();
    let txn = run.client.begin_interactive(run.now)?;
    run.client.execute(run.now, txn, read("n1/a"))?;
    run.collect_client();
    run.settle();
    run.client.execute(run.now, txn, write("n2/b", "3"))?;
    run.collect_client();
    run.settle();
    run.client.commit(run.now, txn)?;
    run.collect_client();
    run.settle();
    run.lost_to = Some(NodeId(3));
    run.client
        .begin(run.now, vec![write("n1/x", "1"), write("n3/y", "2")])?;
    run.collect_client();
    run.settle();
    for _ in 0..20 {
        run.advance(Duration::from_millis(250));
    }

    for target in ["frame_decode", "message_handle"] {
        let frames = seeds.entry(target).or_default();
        for (kind, frame) in &run.frames {
            frames.insert(kind.clone(), frame.clone());
        }
    }
    let logs = seeds.entry("record_log_replay").or_default();
    for index in 0..run.nodes.len() {
        logs.insert(format!("log-n{}", index + 1), run.log_bytes(index));
        let mut checkpoint = Vec::new();
        for record in run.nodes[index].checkpoint_records() {
            encode_record(&record, &mut checkpoint)?;
        }
        logs.insert(format!("checkpoint-n{}", index + 1), checkpoint);
    }

    // Gossip among three detectors, a client among them; one member draining, one left.
    let config = dtx_protocol::DetectorConfig::default();
    let mut detectors: Vec<FailureDetector> = (1..=3)
        .map(|id| {
            FailureDetector::new(
                config.clone(),
                NodeId(id),
                Role::DataNode,
                1,
                id,
                Time::ZERO,
            )
        })
        .collect();
    detectors.push(FailureDetector::new(
        config,
        CLIENT,
        Role::Client,
        1,
        9,
        Time::ZERO,
    ));
    detectors[1].set_role(Role::Draining);
    detectors[2].set_role(Role::Left);
    detectors[0].set_addresses(vec![dtx_protocol::Address(vec![
        4, 127, 0, 0, 1, 6, 156, 65,
    ])]);
    let candidates: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let heartbeats = seeds.entry("heartbeat_decode").or_default();
    for step in 1..=3u64 {
        let now = Time::from_micros(step * 500_000);
        let digests: Vec<_> = detectors
            .iter_mut()
            .filter_map(|detector| detector.round(now, &candidates))
            .collect();
        for (_, digest) in &digests {
            let Some(from) = digest.first().map(|heartbeat| heartbeat.node) else {
                continue;
            };
            for detector in detectors.iter_mut() {
                detector.merge(now, from, digest);
            }
        }
        if let Some((_, digest)) = digests.first() {
            let frame = encode(&[Message::Gossip {
                heartbeats: digest.clone(),
            }])?;
            heartbeats.insert(format!("gossip-frame-{step}"), frame);
            let mut bare = Vec::new();
            ciborium::into_writer(digest, &mut bare)?;
            heartbeats.insert(format!("bare-heartbeats-{step}"), bare);
        }
    }

    let configs = seeds.entry("config_parse").or_default();
    configs.insert("init-3".to_string(), cluster_toml(3, false).into_bytes());
    configs.insert("init-1".to_string(), cluster_toml(1, false).into_bytes());
    configs.insert(
        "roles-and-control".to_string(),
        cluster_toml(4, true).into_bytes(),
    );

    for (target, files) in seeds {
        let directory = corpus.join(target);
        std::fs::create_dir_all(&directory)?;
        for (name, bytes) in files.into_iter().take(SEEDS_PER_TARGET_MAX) {
            std::fs::write(directory.join(name), bytes)?;
        }
    }
    Ok(())
}

/// A `cluster.toml` as `dtx init` writes it, with peer ids from fixed keys; `extras` adds
/// control endpoints and the `service`/`acceptor` roles.
fn cluster_toml(nodes: u8, extras: bool) -> String {
    let f = if nodes >= 3 { 1 } else { 0 };
    let mut text = format!("f = {f}\n");
    for index in 1..=nodes {
        let Ok(keypair) = libp2p::identity::Keypair::ed25519_from_bytes([index; 32]) else {
            panic!("32 bytes are an ed25519 secret key");
        };
        let peer_id = keypair.public().to_peer_id();
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"n{index}\"\nid = {index}\npeer_id = \"{peer_id}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\nkey_file = \"n{index}.key\"\n",
            40000 + u32::from(index)
        ));
        if extras {
            text.push_str(&format!(
                "control = \"127.0.0.1:{}\"\n",
                40100 + u32::from(index)
            ));
            match index {
                4 => text.push_str("role = \"service\"\n"),
                3 => text.push_str("role = \"data\"\n"),
                _ => {}
            }
        }
    }
    text
}
