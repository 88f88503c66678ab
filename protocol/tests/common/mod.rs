//! A tiny synchronous runtime for protocol tests: real `Node`s and one `Client`, every
//! persist instantly durable, messages delivered in order until quiet.
#![allow(dead_code, clippy::unwrap_used)] // Shared by several test files; each uses a part.

use dtx_protocol::*;
use std::collections::VecDeque;
use std::time::Duration;

pub const CLIENT: NodeId = NodeId(100);

pub struct Harness {
    pub now: Time,
    pub nodes: Vec<Node>,
    pub logs: Vec<Vec<Record>>,
    pub client: Client,
    pub mail: VecDeque<(NodeId, Envelope)>,
    pub finished: Vec<Finished>,
    pub executed: Vec<Executed>,
    /// Messages to these destinations are dropped (a crashed client or a cut link).
    pub drop_to: Vec<NodeId>,
}

pub fn cluster(nodes: u64) -> Cluster {
    let members = (1..=nodes)
        .map(|index| Member {
            id: NodeId(index),
            name: format!("n{index}"),
        })
        .collect();
    Cluster::new(members, 1).unwrap()
}

impl Harness {
    pub fn new(nodes: u64) -> Harness {
        let cluster = cluster(nodes);
        Harness {
            now: Time::ZERO,
            nodes: (1..=nodes)
                .map(|index| Node::new(config(index, &cluster)))
                .collect(),
            logs: vec![Vec::new(); nodes as usize],
            client: Client::new(ClientConfig {
                detector: None,
                ..ClientConfig::new(CLIENT, cluster, 1)
            }),
            mail: VecDeque::new(),
            finished: Vec::new(),
            executed: Vec::new(),
            drop_to: Vec::new(),
        }
    }

    pub fn begin(&mut self, operations: Vec<Operation>) -> TxnId {
        let txn = self.client.begin(self.now, operations).unwrap();
        self.collect_client();
        txn
    }

    pub fn collect_client(&mut self) {
        while let Some(envelope) = self.client.poll_output() {
            self.mail.push_back((CLIENT, envelope));
        }
        while let Some(finished) = self.client.poll_event() {
            self.finished.push(finished);
        }
        while let Some(executed) = self.client.poll_executed() {
            self.executed.push(executed);
        }
    }

    pub fn collect_node(&mut self, index: usize) {
        let now = self.now;
        while let Some(output) = self.nodes[index].poll_output() {
            match output {
                Output::Persist { token, records } => {
                    self.logs[index].extend(records);
                    self.nodes[index].handle(now, Input::Persisted { token });
                }
                Output::Send(envelope) => self.mail.push_back((self.nodes[index].id(), envelope)),
            }
        }
    }

    /// Delivers everything until quiet.
    pub fn settle(&mut self) {
        let mut steps = 0;
        while let Some((from, envelope)) = self.mail.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "message storm");
            if self.drop_to.contains(&envelope.to) {
                continue;
            }
            let input = Input::Receive {
                from,
                messages: envelope.messages,
            };
            if envelope.to == CLIENT {
                self.client.handle(self.now, input);
                self.collect_client();
            } else {
                let index = (envelope.to.0 - 1) as usize;
                self.nodes[index].handle(self.now, input);
                self.collect_node(index);
            }
        }
    }

    /// Advances time and fires every due timer, then settles.
    pub fn advance(&mut self, duration: Duration) {
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

    pub fn result(&self, txn: TxnId) -> Option<&TxnResult> {
        self.finished
            .iter()
            .find(|finished| finished.txn == txn)
            .map(|finished| &finished.result)
    }
}

pub fn config(index: u64, cluster: &Cluster) -> NodeConfig {
    let mut config = NodeConfig::new(NodeId(index), cluster.clone(), index);
    config.decision_timeout = Duration::from_millis(50);
    // These tests step time coarsely; heartbeats are tested on their own.
    config.detector = None;
    config
}

pub fn write(key: &str, value: &str) -> Operation {
    Operation::Write {
        key: Key::new(key),
        value: Value::new(value.as_bytes().to_vec()),
    }
}

pub fn read(key: &str) -> Operation {
    Operation::Read {
        key: Key::new(key),
        expected: None,
    }
}
