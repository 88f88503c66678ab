//! What the node reports about itself: the `/status` report and the `/metrics` text the
//! control endpoint asks the event loop for.

use super::{detection_bound, EventLoop};
use crate::config::client_node_id;
use crate::control::{
    ClientStatus, Exposition, Gauges, InDoubtStatus, MemberStatus, ResourceReport, StatusReport,
    PHI_DISPLAY_MAX,
};
use dtx_protocol::detector::{Address, Heartbeat, Role};
use dtx_protocol::NodeId;
use libp2p::Multiaddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

impl EventLoop {
    /// The cluster as this node sees it.
    pub(super) fn status(&mut self) -> StatusReport {
        self.forget_suspicions_of_forgotten();
        let now = self.clock.now();
        let instant = Instant::now();
        let detector = self.node.detector();
        let view: BTreeMap<NodeId, (Heartbeat, f64)> = detector
            .map(|detector| detector.view(now))
            .unwrap_or_default()
            .into_iter()
            .map(|(heartbeat, phi)| (heartbeat.node, (heartbeat, phi)))
            .collect();
        let own = detector.and_then(|detector| detector.digest().first().cloned());
        let mut members = Vec::new();
        for node in &self.config.nodes {
            if node.id == self.me.id {
                members.push(MemberStatus {
                    name: node.name.clone(),
                    id: node.id.0,
                    role: "self".to_string(),
                    incarnation: own.as_ref().map_or(0, |heartbeat| heartbeat.incarnation),
                    counter: own.as_ref().map_or(0, |heartbeat| heartbeat.counter),
                    phi: None,
                    suspected: false,
                    suspected_for_ms: None,
                    load: self.node.open_transactions() as u32,
                    addresses: own
                        .as_ref()
                        .map(|heartbeat| readable(&heartbeat.addresses))
                        .unwrap_or_default(),
                });
                continue;
            }
            members.push(member_status(
                node.name.clone(),
                node.id,
                view.get(&node.id),
                &self.suspected_since,
            ));
        }
        for (id, entry) in &view {
            if self.config.node(*id).is_none() {
                members.push(member_status(
                    format!("client-{:x}", id.0),
                    *id,
                    Some(entry),
                    &self.suspected_since,
                ));
            }
        }
        let in_doubt = self
            .node
            .undecided()
            .filter(|descriptor| self.in_doubt_since.contains_key(&descriptor.txn))
            .map(|descriptor| InDoubtStatus {
                txn: descriptor.txn.to_string(),
                age_ms: self
                    .in_doubt_since
                    .get(&descriptor.txn)
                    .map(|since| instant.duration_since(*since).as_millis() as u64)
                    .unwrap_or(0),
                participants: descriptor.participants.iter().map(|node| node.0).collect(),
            })
            .collect();
        StatusReport {
            name: self.me.name.clone(),
            id: self.me.id.0,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            draining: self.node.is_draining(),
            open_transactions: self.node.open_transactions(),
            phi_threshold: detector.map(|detector| detector.config().phi_threshold),
            detection_bound_ms: detector
                .map(|detector| detection_bound(detector.config()).as_millis() as u64),
            clients: self.connected_clients(&view),
            members,
            in_doubt,
            store_bytes: self.node.store_bytes(),
            storage_quota_bytes: self.node.config().limits.store_bytes_max,
            storage_full: self.storage_alarm(),
            quarantined: self.node.is_quarantined(),
            client_sessions: (!self.gate.is_insecure()).then(|| self.gate.sessions()),
            resource: self.resource_report(),
            fault_injection: self.faults.enabled(),
            faults_active: self.faults.active,
        }
    }

    /// What the node's service resource is doing (`None`: the built-in store).
    fn resource_report(&self) -> Option<ResourceReport> {
        let runner = self.resource.as_ref()?;
        let status = self.node.resource_status();
        Some(ResourceReport {
            preparing: status.preparing,
            unacknowledged: status.unacknowledged,
            settling: status.settling,
            calls_pending: runner.pending(),
        })
    }

    /// The service resource's gauges (none with the built-in store).
    fn export_resource_metrics(&self, exposition: &mut Exposition) {
        let Some(report) = self.resource_report() else {
            return;
        };
        let gauges = [
            (
                "dtx_resource_preparing",
                "Prepares asked of the service and not answered yet.",
                report.preparing as u64,
            ),
            (
                "dtx_resource_unacknowledged",
                "Decided transactions whose commit or rollback the service has not acknowledged (in doubt at the service).",
                report.unacknowledged as u64,
            ),
            (
                "dtx_resource_settling",
                "1 from a restart until the service listed what it holds prepared.",
                u64::from(report.settling),
            ),
            (
                "dtx_resource_calls_pending",
                "Calls to the service running or waiting for a place.",
                report.calls_pending as u64,
            ),
        ];
        for (name, help, value) in gauges {
            exposition.gauge(name, help, value);
        }
    }

    /// The `/metrics` text.
    pub(super) fn render_metrics(&mut self) -> String {
        let mut exposition = Exposition::new(&self.me.name);
        self.export_node_metrics(&mut exposition);
        self.admission.export(&mut exposition, self.gate.sessions());
        self.export_trust_metrics(&mut exposition);
        self.export_resource_metrics(&mut exposition);
        self.export_fault_metrics(&mut exposition);
        crate::process_metrics::export(&mut exposition);
        exposition.render()
    }

    /// What fault injection did, by direction (all zero on a node without the flag).
    fn export_fault_metrics(&self, exposition: &mut Exposition) {
        let counters = self.faults.counters();
        let families = [
            (
                "dtx_fault_dropped_total",
                "Messages dropped by fault injection (including those over the delay queue's bound).",
                counters.dropped_in,
                counters.dropped_out,
            ),
            (
                "dtx_fault_delayed_total",
                "Messages held back by a fault-injection delay.",
                counters.delayed_in,
                counters.delayed_out,
            ),
            (
                "dtx_fault_duplicated_total",
                "Messages delivered or sent twice by fault injection.",
                counters.duplicated_in,
                counters.duplicated_out,
            ),
        ];
        for (name, help, inbound, outbound) in families {
            exposition.counter_family(
                name,
                help,
                [
                    (("direction", "in".to_string()), inbound),
                    (("direction", "out".to_string()), outbound),
                ],
            );
        }
        exposition.gauge(
            "dtx_fault_active",
            "1 while a fault plan with rules is in force.",
            u64::from(self.faults.active),
        );
    }

    /// The client processes connected now: visitors with a session, or (insecure mode,
    /// no sessions) visitors the failure detector hears as clients.
    fn connected_clients(&self, view: &BTreeMap<NodeId, (Heartbeat, f64)>) -> Vec<ClientStatus> {
        let now = Instant::now();
        self.admission
            .connected_visitors()
            .filter_map(|(peer, connected_at)| {
                let id = client_node_id(&peer);
                let user = self.gate.session(&peer).map(|user| user.name.clone());
                let heard = view
                    .get(&id)
                    .is_some_and(|(heartbeat, _)| heartbeat.role == Role::Client);
                (user.is_some() || (self.gate.is_insecure() && heard)).then(|| ClientStatus {
                    name: format!("client-{:x}", id.0),
                    id: id.0,
                    peer: peer.to_string(),
                    user,
                    connected_for_ms: now.saturating_duration_since(connected_at).as_millis()
                        as u64,
                })
            })
            .collect()
    }

    /// Drops the suspicion start of every member the failure detector no longer tracks: a
    /// client that exited is suspected until the detector forgets it, and its entry would
    /// otherwise hold a place in the bounded table for good.
    pub(super) fn forget_suspicions_of_forgotten(&mut self) {
        let Some(detector) = self.node.detector() else {
            return;
        };
        let tracked: BTreeSet<NodeId> = detector
            .view(self.clock.now())
            .into_iter()
            .map(|(heartbeat, _)| heartbeat.node)
            .collect();
        let config = &self.config;
        self.suspected_since
            .retain(|node, _| tracked.contains(node) || config.node(*node).is_some());
    }

    /// True while the storage quota refuses writes: the protocol says the quota is
    /// reached, or a write was refused and the data has not shrunk since.
    fn storage_alarm(&mut self) -> bool {
        let used = self
            .node
            .store_bytes()
            .saturating_add(self.node.prepared_bytes());
        if self.storage_refused_at.is_some_and(|at| used < at) {
            self.storage_refused_at = None;
        }
        self.node.storage_full() || self.storage_refused_at.is_some()
    }

    /// Rejected messages by reason, storage use and its alarm, the acceptor quarantine.
    fn export_trust_metrics(&mut self, exposition: &mut Exposition) {
        let storage_alarm = self.storage_alarm();
        exposition.counter_family(
            "dtx_rejected_messages_total",
            "Messages the protocol rejected, by reason.",
            self.node
                .rejected_counts()
                .iter()
                .map(|(kind, count)| (("reason", format!("{kind:?}")), *count)),
        );
        let quota = self.node.config().limits.store_bytes_max;
        let gauges = [
            (
                "dtx_store_bytes",
                "Bytes of committed rows (keys and values) this node holds.",
                self.node.store_bytes(),
            ),
            (
                "dtx_store_prepared_bytes",
                "Bytes prepared transactions would add when they commit.",
                self.node.prepared_bytes(),
            ),
            (
                "dtx_storage_quota_bytes",
                "The storage quota (0: none).",
                quota.unwrap_or(0),
            ),
            (
                "dtx_storage_full",
                "1 while the storage quota is reached: writes that grow the data are refused.",
                u64::from(storage_alarm),
            ),
            (
                "dtx_acceptor_quarantined",
                "1 while the node, reinitialized after data loss, takes no acceptor duty.",
                u64::from(self.node.is_quarantined()),
            ),
        ];
        for (name, help, value) in gauges {
            exposition.gauge(name, help, value);
        }
    }

    /// The node's counters and detector gauges.
    fn export_node_metrics(&mut self, exposition: &mut Exposition) {
        let now = self.clock.now();
        let phi = self
            .config
            .nodes
            .iter()
            .filter(|node| node.id != self.me.id)
            .filter_map(|node| {
                let phi = self.node.detector()?.phi(now, node.id)?;
                Some((node.name.clone(), phi))
            })
            .collect();
        let gauges = Gauges {
            in_doubt: self.node.in_doubt().count(),
            open_transactions: self.node.open_transactions(),
            suspected: self.node.suspected().len(),
            draining: self.node.is_draining(),
            phi,
        };
        self.metrics.export(exposition, &gauges);
        exposition.counter(
            TRANSPORT_WRITES_METRIC,
            "Writes handed to the transport (stream writes and requests); messages sent per write is the batching.",
            self.links.writes(),
        );
    }
}

/// The transport writes counter's name.
pub const TRANSPORT_WRITES_METRIC: &str = "dtx_transport_writes_total";

fn member_status(
    name: String,
    id: NodeId,
    seen: Option<&(Heartbeat, f64)>,
    suspected_since: &BTreeMap<NodeId, Instant>,
) -> MemberStatus {
    let suspected_for_ms = suspected_since
        .get(&id)
        .map(|since| since.elapsed().as_millis() as u64);
    let role = |role: Role| match role {
        Role::DataNode => "data",
        Role::Client => "client",
        Role::Draining => "draining",
        Role::Left => "left",
        Role::Quarantined => "quarantined",
    };
    match seen {
        Some((heartbeat, phi)) => MemberStatus {
            name,
            id: id.0,
            role: role(heartbeat.role).to_string(),
            incarnation: heartbeat.incarnation,
            counter: heartbeat.counter,
            phi: Some(if phi.is_finite() {
                phi.min(PHI_DISPLAY_MAX)
            } else {
                PHI_DISPLAY_MAX
            }),
            suspected: suspected_for_ms.is_some(),
            suspected_for_ms,
            load: heartbeat.load,
            addresses: readable(&heartbeat.addresses),
        },
        None => MemberStatus {
            name,
            id: id.0,
            role: "data".to_string(),
            incarnation: 0,
            counter: 0,
            phi: None,
            suspected: false,
            suspected_for_ms: None,
            load: 0,
            addresses: Vec::new(),
        },
    }
}

/// Heartbeat addresses as multiaddr text (bytes that are no multiaddr are shown as such).
fn readable(addresses: &[Address]) -> Vec<String> {
    addresses
        .iter()
        .map(|address| match Multiaddr::try_from(address.0.clone()) {
            Ok(multiaddr) => multiaddr.to_string(),
            Err(_) => format!("(not a multiaddr: {} bytes)", address.0.len()),
        })
        .collect()
}
