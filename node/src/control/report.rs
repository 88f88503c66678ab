//! What the control endpoint reports: the `/status` report (and its text table for
//! `dtx status`) and the node's counters for `/metrics`.

use super::exposition::{AbortsByReason, Exposition};
use serde::{Deserialize, Serialize};

/// One member (data node or client) as this node's failure detector sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node's name (`client-<id>` for clients).
    pub name: String,
    /// Its protocol id.
    pub id: u64,
    /// `data`, `client`, `draining`, `left` (drained and gone: not suspected), or `self`.
    pub role: String,
    /// Incarnation of its newest heartbeat heard (0: never heard).
    pub incarnation: u64,
    /// Counter of its newest heartbeat heard.
    pub counter: u64,
    /// Phi now (`None`: never heard from), capped at [`PHI_DISPLAY_MAX`].
    pub phi: Option<f64>,
    /// Suspected now.
    pub suspected: bool,
    /// How long it has been suspected (ms), if it is.
    #[serde(default)]
    pub suspected_for_ms: Option<u64>,
    /// Open transactions it reported (load hint).
    pub load: u32,
    /// Where it listens, from its newest heartbeat (multiaddrs; empty for clients).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A client process connected to this node now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Its name among the members (`client-<id>`), where the failure detector's view of it
    /// is.
    pub name: String,
    /// Its protocol id.
    pub id: u64,
    /// Its libp2p peer id (each client process draws a fresh one).
    pub peer: String,
    /// The user its session acts for (`None`: no session, in insecure mode).
    pub user: Option<String>,
    /// How long it has been connected (ms).
    pub connected_for_ms: u64,
}

/// Phi values above this are shown as this (phi grows without bound in a long silence).
pub const PHI_DISPLAY_MAX: f64 = 1000.0;

/// A transaction this RM voted Prepared for and still waits to learn the outcome of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InDoubtStatus {
    /// The transaction id.
    pub txn: String,
    /// Since when this node has known it in doubt (ms; from its first sighting after start).
    pub age_ms: u64,
    /// Its participants (node ids).
    pub participants: Vec<u64>,
}

/// `GET /status`: the cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node's name.
    pub name: String,
    /// This node's id.
    pub id: u64,
    /// Milliseconds since the process started.
    pub uptime_ms: u64,
    /// True while draining.
    pub draining: bool,
    /// Transactions this node still has a part in (RM, acceptor, leader, executions).
    pub open_transactions: usize,
    /// The failure detector's phi threshold (`None`: detector off).
    pub phi_threshold: Option<f64>,
    /// Crash-to-suspicion bound implied by the detector configuration (ms), see
    /// [`crate::daemon::detection_bound`].
    pub detection_bound_ms: Option<u64>,
    /// Data nodes and clients known to the failure detector, data nodes first. A client
    /// stays here (and is suspected) after it exits, until the detector forgets it; the
    /// text table shows data nodes only.
    pub members: Vec<MemberStatus>,
    /// Client processes connected now (one that disconnected is not listed).
    #[serde(default)]
    pub clients: Vec<ClientStatus>,
    /// In-doubt transactions.
    pub in_doubt: Vec<InDoubtStatus>,
    /// Bytes of committed rows held.
    #[serde(default)]
    pub store_bytes: u64,
    /// The storage quota, if any.
    #[serde(default)]
    pub storage_quota_bytes: Option<u64>,
    /// True while the storage quota refuses writes that grow the data (the alarm).
    #[serde(default)]
    pub storage_full: bool,
    /// True while the node, reinitialized after data loss, takes no acceptor duty.
    #[serde(default)]
    pub quarantined: bool,
    /// Client sessions open (`None` in insecure mode).
    #[serde(default)]
    pub client_sessions: Option<usize>,
    /// The node's resource when it is a service (`None`: the built-in key-value store).
    #[serde(default)]
    pub resource: Option<ResourceReport>,
    /// The node was started with `--fault-injection` (takes fault plans).
    #[serde(default)]
    pub fault_injection: bool,
    /// A fault plan with rules is in force now (`GET /faults` shows it).
    #[serde(default)]
    pub faults_active: bool,
}

/// What a node whose resource is a service is doing with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    /// Prepares asked of the service and not answered yet.
    pub preparing: usize,
    /// Decided transactions whose commit or rollback the service has not acknowledged:
    /// in doubt at the service until it does (the node keeps asking).
    pub unacknowledged: usize,
    /// True from a restart until the service listed what it holds prepared (new prepares
    /// are refused meanwhile).
    pub settling: bool,
    /// Calls to the service running or waiting for a place now.
    pub calls_pending: usize,
}

impl ResourceReport {
    /// One line for the text report.
    pub fn render(&self) -> String {
        format!(
            "resource: service; {} preparing, {} unacknowledged (in doubt at the service), {} calls pending{}\n",
            self.preparing,
            self.unacknowledged,
            self.calls_pending,
            if self.settling {
                "; SETTLING: waiting for the service's prepared list"
            } else {
                ""
            }
        )
    }
}

impl StatusReport {
    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|member| member.name == name)
    }

    /// A human-readable table of the data nodes, then the connected clients.
    pub fn render(&self) -> String {
        let mut text = format!(
            "node {} (id {}), up {:.1} s{}; {} open transactions; phi threshold {}; detection bound {}\n",
            self.name,
            self.id,
            self.uptime_ms as f64 / 1000.0,
            if self.draining { ", DRAINING" } else { "" },
            self.open_transactions,
            self.phi_threshold
                .map(|phi| format!("{phi}"))
                .unwrap_or_else(|| "- (detector off)".to_string()),
            self.detection_bound_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".to_string()),
        );
        let quota = self
            .storage_quota_bytes
            .map(|quota| format!(" of {quota} quota"))
            .unwrap_or_default();
        let sessions = self
            .client_sessions
            .map(|count| format!("{count} client sessions"))
            .unwrap_or_else(|| "INSECURE (clients not authenticated)".to_string());
        text.push_str(&format!(
            "storage: {} bytes{quota}{}; {sessions}{}\n",
            self.store_bytes,
            if self.storage_full {
                " - STORAGE FULL: writes that grow the data are refused"
            } else {
                ""
            },
            if self.quarantined {
                "; QUARANTINED: reinitialized, no acceptor duty until the others confirm"
            } else {
                ""
            },
        ));
        if self.faults_active {
            text.push_str(
                "FAULTS ACTIVE: a fault plan changes this node's traffic (GET /faults)\n",
            );
        } else if self.fault_injection {
            text.push_str("fault injection enabled (--fault-injection), no plan in force\n");
        }
        text.push_str(&format!(
            "{:<24} {:>20} {:<9} {:>11} {:>10} {:>8} {:>6} {:<9} {}\n",
            "member", "id", "role", "incarnation", "counter", "phi", "load", "state", "addresses"
        ));
        for member in self.members.iter().filter(|member| member.role != "client") {
            let state = if member.role == "self" {
                "self"
            } else if member.suspected {
                "SUSPECTED"
            } else if member.role == "left" {
                "left"
            } else if member.phi.is_none() {
                "unknown"
            } else {
                "trusted"
            };
            text.push_str(&format!(
                "{:<24} {:>20} {:<9} {:>11} {:>10} {:>8} {:>6} {:<9} {}\n",
                member.name,
                member.id,
                member.role,
                member.incarnation,
                member.counter,
                member
                    .phi
                    .map(|phi| format!("{phi:.2}"))
                    .unwrap_or_else(|| "-".to_string()),
                member.load,
                state,
                member.addresses.join(" ")
            ));
        }
        match &self.resource {
            Some(resource) => text.push_str(&resource.render()),
            None => text.push_str("resource: built-in key-value store\n"),
        }
        self.render_clients(&mut text);
        if self.in_doubt.is_empty() {
            text.push_str("no transactions in doubt\n");
        } else {
            text.push_str(&format!("{} in doubt:\n", self.in_doubt.len()));
            for txn in &self.in_doubt {
                text.push_str(&format!(
                    "  {} age {} ms participants {:?}\n",
                    txn.txn, txn.age_ms, txn.participants
                ));
            }
        }
        text
    }

    /// The connected clients, apart from the members: a client that exited is gone from
    /// this list, not shown as a suspected member.
    fn render_clients(&self, text: &mut String) {
        if self.clients.is_empty() {
            text.push_str("no clients connected\n");
            return;
        }
        text.push_str(&format!("{} clients connected:\n", self.clients.len()));
        text.push_str(&format!(
            "  {:<24} {:<52} {:<16} {:>11} {}\n",
            "client", "peer", "user", "connected", "state"
        ));
        for client in &self.clients {
            let state = match self.member(&client.name) {
                Some(member) if member.suspected => "SUSPECTED",
                Some(member) if member.phi.is_some() => "trusted",
                _ => "unknown",
            };
            text.push_str(&format!(
                "  {:<24} {:<52} {:<16} {:>9.1} s {}\n",
                client.name,
                client.peer,
                client.user.as_deref().unwrap_or("-"),
                client.connected_for_ms as f64 / 1000.0,
                state
            ));
        }
    }
}

/// The node's counters and its group-commit histogram, exported to a scrape's
/// [`Exposition`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Transactions this node applied as committed (as participant RM).
    pub committed: u64,
    /// Transactions this node learned aborted (as participant RM).
    pub aborted: u64,
    /// Protocol messages received from peers (after the allow-list).
    pub messages_received: u64,
    /// Protocol messages sent to peers.
    pub messages_sent: u64,
    /// Heartbeat digests published on the liveness topic.
    pub heartbeats_published: u64,
    /// Heartbeat digests received on the liveness topic from members.
    pub heartbeats_received: u64,
    /// Heartbeat digests sent point to point because publishing failed.
    pub heartbeats_point_to_point: u64,
    /// Group commits completed (one fsync each).
    pub wal_fsyncs: u64,
    /// Persist outputs per group commit: bucket counts for [`GROUP_COMMIT_BUCKETS`].
    pub group_commit_buckets: [u64; GROUP_COMMIT_BUCKETS.len()],
    /// Sum of persist outputs over all group commits.
    pub group_commit_sum: u64,
    /// Transactions refused because the node was draining.
    pub refused_draining: u64,
    /// Aborted votes this node's RM recorded, by reason.
    pub aborted_votes: AbortsByReason,
}

/// Upper bounds of the group-commit size histogram (persist outputs per fsync).
pub const GROUP_COMMIT_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Gauges sampled when the metrics are rendered.
#[derive(Debug, Default)]
pub struct Gauges {
    /// In-doubt transactions (RM voted Prepared, outcome unknown).
    pub in_doubt: usize,
    /// Transactions open at this node.
    pub open_transactions: usize,
    /// Members suspected now.
    pub suspected: usize,
    /// 1 while draining.
    pub draining: bool,
    /// Phi of each data node by name.
    pub phi: Vec<(String, f64)>,
}

impl Metrics {
    /// Records one group commit of `persists` persist outputs.
    pub fn observe_group_commit(&mut self, persists: u64) {
        self.wal_fsyncs += 1;
        self.group_commit_sum += persists;
        for (bucket, bound) in self
            .group_commit_buckets
            .iter_mut()
            .zip(GROUP_COMMIT_BUCKETS)
        {
            if persists <= bound {
                *bucket += 1;
            }
        }
    }

    /// The text exposition of these counters and `gauges` alone (see
    /// [`Metrics::export`]).
    pub fn render(&self, node: &str, gauges: &Gauges) -> String {
        let mut exposition = Exposition::new(node);
        self.export(&mut exposition, gauges);
        exposition.render()
    }

    /// Adds these counters and `gauges` to a scrape.
    pub fn export(&self, exposition: &mut Exposition, gauges: &Gauges) {
        let counters = [
            (
                "dtx_transactions_committed_total",
                "Transactions applied as committed by this node's RM.",
                self.committed,
            ),
            (
                "dtx_transactions_aborted_total",
                "Transactions this node's RM learned aborted.",
                self.aborted,
            ),
            (
                "dtx_messages_received_total",
                "Protocol messages received from peers.",
                self.messages_received,
            ),
            (
                "dtx_messages_sent_total",
                "Protocol messages sent to peers.",
                self.messages_sent,
            ),
            (
                "dtx_heartbeats_published_total",
                "Heartbeat digests published on the liveness topic.",
                self.heartbeats_published,
            ),
            (
                "dtx_heartbeats_received_total",
                "Heartbeat digests received on the liveness topic.",
                self.heartbeats_received,
            ),
            (
                "dtx_heartbeats_point_to_point_total",
                "Heartbeat digests sent point to point because publishing failed.",
                self.heartbeats_point_to_point,
            ),
            (
                "dtx_wal_fsyncs_total",
                "Group commits of the write-ahead log (one fsync each).",
                self.wal_fsyncs,
            ),
            (
                "dtx_refused_draining_total",
                "Prepares of new transactions refused while draining.",
                self.refused_draining,
            ),
        ];
        for (name, help, value) in counters {
            exposition.counter(name, help, value);
        }
        self.aborted_votes.export(exposition);
        let gauges_now = [
            (
                "dtx_in_doubt_transactions",
                "Transactions this RM voted Prepared for, outcome not yet known.",
                gauges.in_doubt,
            ),
            (
                "dtx_open_transactions",
                "Transactions this node still has a part in.",
                gauges.open_transactions,
            ),
            (
                "dtx_suspected_members",
                "Members the failure detector suspects now.",
                gauges.suspected,
            ),
            (
                "dtx_draining",
                "1 while the node drains.",
                usize::from(gauges.draining),
            ),
        ];
        for (name, help, value) in gauges_now {
            exposition.gauge(name, help, value as u64);
        }
        exposition.gauge_family(
            "dtx_member_phi",
            "Phi of each data node as seen here.",
            gauges.phi.iter().map(|(member, phi)| {
                // `+ 0.0`: a phi of -0.0 (no silence at all) is shown as 0.
                (("member", member.clone()), phi.min(PHI_DISPLAY_MAX) + 0.0)
            }),
        );
        exposition.histogram(
            "dtx_wal_group_commit_persists",
            "Persist outputs made durable by one fsync.",
            GROUP_COMMIT_BUCKETS
                .into_iter()
                .zip(self.group_commit_buckets),
            self.group_commit_sum,
            self.wal_fsyncs,
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text_with_cumulative_buckets() {
        let mut metrics = Metrics::default();
        metrics.observe_group_commit(1);
        metrics.observe_group_commit(3);
        metrics.observe_group_commit(1000);
        let text = metrics.render("n1", &Gauges::default());
        assert!(
            text.contains("dtx_wal_fsyncs_total{node=\"n1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("dtx_wal_group_commit_persists_bucket{node=\"n1\",le=\"1\"} 1\n"));
        assert!(text.contains("dtx_wal_group_commit_persists_bucket{node=\"n1\",le=\"4\"} 2\n"));
        assert!(text.contains("dtx_wal_group_commit_persists_bucket{node=\"n1\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("dtx_wal_group_commit_persists_sum{node=\"n1\"} 1004\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "sample line {line:?}");
        }
    }

    /// A status report for a fake event loop to answer with.
    pub(in crate::control) fn report(draining: bool) -> StatusReport {
        StatusReport {
            name: "n1".to_string(),
            id: 1,
            uptime_ms: 5,
            draining,
            open_transactions: 0,
            phi_threshold: Some(8.0),
            detection_bound_ms: Some(500),
            members: Vec::new(),
            clients: Vec::new(),
            in_doubt: Vec::new(),
            store_bytes: 2048,
            storage_quota_bytes: Some(4096),
            storage_full: draining,
            quarantined: false,
            client_sessions: Some(3),
            resource: None,
            fault_injection: false,
            faults_active: false,
        }
    }

    #[test]
    fn the_status_text_shows_storage_the_alarm_and_the_sessions() {
        let calm = report(false).render();
        assert!(
            calm.contains("storage: 2048 bytes of 4096 quota; 3 client sessions\n"),
            "{calm}"
        );
        let mut alarmed = report(true);
        alarmed.quarantined = true;
        alarmed.client_sessions = None;
        let text = alarmed.render();
        assert!(text.contains("STORAGE FULL"), "{text}");
        assert!(text.contains("QUARANTINED"), "{text}");
        assert!(text.contains("INSECURE"), "{text}");
        assert!(!calm.contains("fault"), "{calm}");
        let mut faulty = report(false);
        faulty.fault_injection = true;
        assert!(faulty.render().contains("fault injection enabled"));
        faulty.faults_active = true;
        assert!(faulty.render().contains("FAULTS ACTIVE"));
    }

    /// A member row: a data node or a client, trusted or suspected.
    fn member(name: &str, role: &str, suspected: bool) -> MemberStatus {
        MemberStatus {
            name: name.to_string(),
            id: 7,
            role: role.to_string(),
            incarnation: 1,
            counter: 9,
            phi: Some(if suspected { 30.0 } else { 0.5 }),
            suspected,
            suspected_for_ms: suspected.then_some(1500),
            load: 0,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn the_status_text_lists_connected_clients_apart_and_not_those_that_exited() {
        let mut status = report(false);
        status.members = vec![
            member("n2", "data", false),
            // Exited: its silence is suspected, but it is no member and no longer connected.
            member("client-e1", "client", true),
            member("client-c2", "client", false),
            member("client-h3", "client", true),
        ];
        status.clients = vec![
            ClientStatus {
                name: "client-c2".to_string(),
                id: 0xc2,
                peer: "12D3KooWconnected".to_string(),
                user: Some("alice".to_string()),
                connected_for_ms: 2500,
            },
            // Connected but silent: a hung client is suspected, and shown so.
            ClientStatus {
                name: "client-h3".to_string(),
                id: 0x43,
                peer: "12D3KooWhung".to_string(),
                user: None,
                connected_for_ms: 100,
            },
        ];
        let text = status.render();
        let (members, clients) = text
            .split_once("2 clients connected:\n")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(members.contains("n2 "), "{text}");
        assert!(
            !members.contains("client-"),
            "clients are not in the member table: {text}"
        );
        assert!(
            !text.contains("client-e1"),
            "a client that exited is not listed: {text}"
        );
        let line = |name: &str| {
            clients
                .lines()
                .find(|line| line.contains(name))
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
        };
        assert!(line("client-c2").contains("12D3KooWconnected"), "{text}");
        assert!(line("client-c2").contains("alice"), "{text}");
        assert!(line("client-c2").contains("2.5 s trusted"), "{text}");
        assert!(line("client-h3").ends_with("SUSPECTED"), "{text}");
        assert_eq!(text.matches("SUSPECTED").count(), 1, "{text}");
        assert!(report(false).render().contains("no clients connected\n"));
    }
}
