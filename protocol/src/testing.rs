//! One synchronous test runtime for the protocol's tests (compiled only with the
//! `testing` feature, which the crate's own dev-dependency switches on): real `Node`s and
//! one `Client` with every persist durable at once ([`Harness`]), and the same loop for a
//! single node driven by hand ([`drain`], [`receive`]). Every test file drives the state
//! machines through these, so the calling order (`handle`, then `poll_output` with each
//! `Persist` acknowledged, then `poll_event`) is written once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed setup is a failed test.

use crate::client::{Client, ClientConfig, Executed, Finished, TxnResult};
use crate::cluster::{Cluster, Member};
use crate::message::{Envelope, Message, Operation};
use crate::node::{Event, Input, Node, NodeConfig, Output, ResourceRequest};
use crate::record::Record;
use crate::types::{Key, NodeId, Time, TxnId, Value};
use std::collections::VecDeque;
use std::time::Duration;

/// What one node did: records it persisted (acknowledged at once), messages it sent and
/// events it reported.
#[derive(Debug, Default)]
pub struct Drained {
    /// Records persisted, in order.
    pub records: Vec<Record>,
    /// Messages sent, with their destinations, in order.
    pub sent: Vec<(NodeId, Message)>,
    /// Events reported, in order.
    pub events: Vec<Event>,
    /// Requests to the node's external resource, in order (left for the test to answer).
    pub resource: Vec<ResourceRequest>,
}

impl Drained {
    /// Records, messages (without their destinations) and events, for a test that
    /// destructures them.
    pub fn into_parts(self) -> (Vec<Record>, Vec<Message>, Vec<Event>) {
        let messages = self.sent.into_iter().map(|(_, message)| message).collect();
        (self.records, messages, self.events)
    }
}

/// Drains `node` until quiet: every `Persist` is recorded and acknowledged at once (which
/// may release held sends), every send and event collected.
pub fn drain(node: &mut Node, now: Time) -> Drained {
    let mut drained = Drained::default();
    loop {
        let mut progressed = false;
        while let Some(output) = node.poll_output() {
            progressed = true;
            match output {
                Output::Persist { token, records } => {
                    drained.records.extend(records);
                    node.handle(now, Input::Persisted { token });
                }
                Output::Send(envelope) => drained.sent.extend(
                    envelope
                        .messages
                        .into_iter()
                        .map(|message| (envelope.to, message)),
                ),
                Output::Resource(request) => drained.resource.push(request),
            }
        }
        while let Some(event) = node.poll_event() {
            progressed = true;
            drained.events.push(event);
        }
        if !progressed {
            return drained;
        }
    }
}

/// Hands `node` the `messages` of `from`, then drains it.
pub fn receive(node: &mut Node, now: Time, from: NodeId, messages: Vec<Message>) -> Drained {
    node.handle(now, Input::Receive { from, messages });
    drain(node, now)
}

/// The id of the harness's client.
pub const CLIENT: NodeId = NodeId(100);

/// A cluster of data nodes `n1..` and one client ([`CLIENT`]), every persist durable at
/// once, messages delivered in order until quiet.
pub struct Harness {
    /// The time every call is handed.
    pub now: Time,
    /// The data nodes; `nodes[i]` is `NodeId(i + 1)`.
    pub nodes: Vec<Node>,
    /// Each node's durable log (the records of its persists).
    pub logs: Vec<Vec<Record>>,
    /// The client.
    pub client: Client,
    /// Envelopes in flight, with their senders.
    pub mail: VecDeque<(NodeId, Envelope)>,
    /// Transactions the client finished.
    pub finished: Vec<Finished>,
    /// Interactive operations the client completed.
    pub executed: Vec<Executed>,
    /// Messages to these destinations are dropped (a crashed client or a cut link).
    pub drop_to: Vec<NodeId>,
    /// Requests of nodes to their external resources (node index, request), left for the
    /// test to answer with [`Harness::feed`].
    pub resource_requests: Vec<(usize, ResourceRequest)>,
}

/// A cluster of `nodes` data nodes `n1..` with F = 1.
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
    /// A harness of `nodes` fresh data nodes and a client without heartbeats.
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
            resource_requests: Vec::new(),
        }
    }

    /// The same harness whose client runs Paxos Commit for every transaction, one
    /// participant too (no one-phase commit; `ClientConfig::one_phase` off).
    pub fn paxos_commit_only(mut self) -> Harness {
        let cluster = self.client.cluster().clone();
        self.client = Client::new(ClientConfig {
            detector: None,
            one_phase: false,
            ..ClientConfig::new(CLIENT, cluster, 1)
        });
        self
    }

    /// Hands `nodes[index]` one input (a resource's answer, say), then settles.
    pub fn feed(&mut self, index: usize, input: Input) {
        self.nodes[index].handle(self.now, input);
        self.collect_node(index);
        self.settle();
    }

    /// Begins a one-shot transaction (its Prepares are queued, not delivered).
    pub fn begin(&mut self, operations: Vec<Operation>) -> TxnId {
        let txn = self.client.begin(self.now, operations).unwrap();
        self.collect_client();
        txn
    }

    /// Queues the client's sends and collects its events.
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

    /// Persists and acknowledges `nodes[index]`'s records and queues its sends.
    pub fn collect_node(&mut self, index: usize) {
        let now = self.now;
        while let Some(output) = self.nodes[index].poll_output() {
            match output {
                Output::Persist { token, records } => {
                    self.logs[index].extend(records);
                    self.nodes[index].handle(now, Input::Persisted { token });
                }
                Output::Send(envelope) => self.mail.push_back((self.nodes[index].id(), envelope)),
                Output::Resource(request) => self.resource_requests.push((index, request)),
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

    /// How `txn` ended, once the client finished it.
    pub fn result(&self, txn: TxnId) -> Option<&TxnResult> {
        self.finished
            .iter()
            .find(|finished| finished.txn == txn)
            .map(|finished| &finished.result)
    }
}

/// The configuration of node `index` in the harness: a short decision timeout and no
/// failure detector.
pub fn config(index: u64, cluster: &Cluster) -> NodeConfig {
    let mut config = NodeConfig::new(NodeId(index), cluster.clone(), index);
    config.decision_timeout = Duration::from_millis(50);
    // These tests step time coarsely; heartbeats are tested on their own.
    config.detector = None;
    config
}

/// A write of `value` to `key`.
pub fn write(key: &str, value: &str) -> Operation {
    Operation::Write {
        key: Key::new(key),
        value: Value::new(value.as_bytes().to_vec()),
    }
}

/// A read of `key`.
pub fn read(key: &str) -> Operation {
    Operation::Read {
        key: Key::new(key),
        expected: None,
    }
}

/// A read of `key` for update (under an exclusive lock).
pub fn read_for_update(key: &str) -> Operation {
    Operation::ReadForUpdate { key: Key::new(key) }
}
