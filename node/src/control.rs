//! The control endpoint of a data node: a tiny HTTP/1.1 server on loopback serving
//! `GET /status` (JSON: the cluster as this node sees it), `GET /metrics` (Prometheus text
//! format) and `POST /drain` (stop taking new transactions, finish, exit), plus the client
//! side used by `dtx status` and `dtx drain`.
//!
//! Hand-written on a tokio `TcpListener` rather than a web framework: three fixed routes,
//! one request per connection, bounded request size, time and connection count. It binds
//! loopback only: it is not authenticated beyond being local, and `POST /drain` takes a
//! node out of service.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Largest request head read (request line and headers); bodies are ignored.
pub const REQUEST_HEAD_MAX_BYTES: usize = 8192;

/// A connection must deliver its request head and take its answer within this time.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Control connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 32;

/// Requests queued for the event loop at most.
pub const REQUESTS_QUEUED_MAX: usize = 64;

/// A request the event loop answers.
#[derive(Debug)]
pub enum ControlRequest {
    /// The cluster as this node sees it.
    Status(oneshot::Sender<StatusReport>),
    /// Prometheus text exposition.
    Metrics(oneshot::Sender<String>),
    /// Start draining; the answer says how many transactions are still open.
    Drain(oneshot::Sender<StatusReport>),
}

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
    /// Data nodes and clients known to the failure detector, data nodes first.
    pub members: Vec<MemberStatus>,
    /// In-doubt transactions.
    pub in_doubt: Vec<InDoubtStatus>,
}

impl StatusReport {
    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|member| member.name == name)
    }

    /// A human-readable table.
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
        text.push_str(&format!(
            "{:<24} {:>20} {:<9} {:>11} {:>10} {:>8} {:>6} {:<9} {}\n",
            "member", "id", "role", "incarnation", "counter", "phi", "load", "state", "addresses"
        ));
        for member in &self.members {
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
}

/// Binds the control endpoint on `address` (which must be loopback).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ControlError> {
    if !address.ip().is_loopback() {
        return Err(ControlError::NotLoopback(address));
    }
    TcpListener::bind(address)
        .await
        .map_err(|cause| ControlError::Bind { address, cause })
}

/// Serves control connections until the event loop goes away.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<ControlRequest>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "control accept failed");
                continue;
            }
        };
        if requests.is_closed() {
            return;
        }
        let requests = requests.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, requests)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "control connection failed"),
                Err(_) => tracing::debug!(%peer, "control connection timed out"),
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    requests: mpsc::Sender<ControlRequest>,
) -> std::io::Result<()> {
    let head = match read_head(&mut stream).await? {
        Ok(head) => head,
        Err(reason) => return respond(&mut stream, 400, "text/plain", &reason).await,
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/status") => {
            let (sender, receiver) = oneshot::channel();
            let report = ask(&requests, ControlRequest::Status(sender), receiver).await;
            match report.and_then(|report| serde_json::to_string(&report).ok()) {
                Some(json) => respond(&mut stream, 200, "application/json", &json).await,
                None => respond(&mut stream, 503, "text/plain", "node stopping\n").await,
            }
        }
        ("GET", "/metrics") => {
            let (sender, receiver) = oneshot::channel();
            match ask(&requests, ControlRequest::Metrics(sender), receiver).await {
                Some(text) => respond(&mut stream, 200, "text/plain; version=0.0.4", &text).await,
                None => respond(&mut stream, 503, "text/plain", "node stopping\n").await,
            }
        }
        ("POST", "/drain") => {
            let (sender, receiver) = oneshot::channel();
            let report = ask(&requests, ControlRequest::Drain(sender), receiver).await;
            match report.and_then(|report| serde_json::to_string(&report).ok()) {
                Some(json) => respond(&mut stream, 200, "application/json", &json).await,
                None => respond(&mut stream, 503, "text/plain", "node stopping\n").await,
            }
        }
        (_, "/status" | "/metrics" | "/drain") => {
            respond(&mut stream, 405, "text/plain", "method not allowed\n").await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "not found (try GET /status, GET /metrics, POST /drain)\n",
            )
            .await
        }
    }
}

async fn ask<T>(
    requests: &mpsc::Sender<ControlRequest>,
    request: ControlRequest,
    receiver: oneshot::Receiver<T>,
) -> Option<T> {
    requests.send(request).await.ok()?;
    receiver.await.ok()
}

/// Reads up to the end of the request head; `Ok(Err(reason))` for a bad request.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<String, String>> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(Err("request ended before its head did\n".to_string()));
        }
        head.extend_from_slice(&buffer[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n")
            || head.windows(2).any(|window| window == b"\n\n")
        {
            break;
        }
        if head.len() > REQUEST_HEAD_MAX_BYTES {
            return Ok(Err(format!(
                "request head exceeds {REQUEST_HEAD_MAX_BYTES} bytes\n"
            )));
        }
    }
    Ok(String::from_utf8(head).map_err(|_| "request head is not UTF-8\n".to_string()))
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The endpoint must be on loopback.
    #[error("control address {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("cannot listen for control requests on {address}: {cause}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The node did not answer (not running, or not there).
    #[error("cannot reach the control endpoint {address}: {cause}")]
    Unreachable {
        /// The address.
        address: SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The answer was not what was expected.
    #[error("bad answer from {address}: {message}")]
    BadAnswer {
        /// The address.
        address: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

/// Sends one request to a control endpoint; returns the status code and the body.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String), ControlError> {
    let unreachable = |cause| ControlError::Unreachable { address, cause };
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(CONNECTION_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&answer);
    let bad = |message: &str| ControlError::BadAnswer {
        address,
        message: message.to_string(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, body.to_string()))
}

/// `GET /status` of the node at `address`.
pub async fn fetch_status(address: SocketAddr) -> Result<StatusReport, ControlError> {
    parse_report(address, request(address, "GET", "/status").await?)
}

/// `POST /drain` to the node at `address`.
pub async fn start_drain(address: SocketAddr) -> Result<StatusReport, ControlError> {
    parse_report(address, request(address, "POST", "/drain").await?)
}

fn parse_report(
    address: SocketAddr,
    (status, body): (u16, String),
) -> Result<StatusReport, ControlError> {
    if status != 200 {
        return Err(ControlError::BadAnswer {
            address,
            message: format!("status {status}: {}", body.trim()),
        });
    }
    serde_json::from_str(&body).map_err(|error| ControlError::BadAnswer {
        address,
        message: error.to_string(),
    })
}

/// Counters and a histogram in Prometheus text format, written by hand.
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

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, node: &str, gauges: &Gauges) -> String {
        let mut text = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {value}\n"
            ));
        };
        counter(
            "dtx_transactions_committed_total",
            "Transactions applied as committed by this node's RM.",
            self.committed,
        );
        counter(
            "dtx_transactions_aborted_total",
            "Transactions this node's RM learned aborted.",
            self.aborted,
        );
        counter(
            "dtx_messages_received_total",
            "Protocol messages received from peers.",
            self.messages_received,
        );
        counter(
            "dtx_messages_sent_total",
            "Protocol messages sent to peers.",
            self.messages_sent,
        );
        counter(
            "dtx_heartbeats_published_total",
            "Heartbeat digests published on the liveness topic.",
            self.heartbeats_published,
        );
        counter(
            "dtx_heartbeats_received_total",
            "Heartbeat digests received on the liveness topic.",
            self.heartbeats_received,
        );
        counter(
            "dtx_heartbeats_point_to_point_total",
            "Heartbeat digests sent point to point because publishing failed.",
            self.heartbeats_point_to_point,
        );
        counter(
            "dtx_wal_fsyncs_total",
            "Group commits of the write-ahead log (one fsync each).",
            self.wal_fsyncs,
        );
        counter(
            "dtx_refused_draining_total",
            "Prepares of new transactions refused while draining.",
            self.refused_draining,
        );
        let mut gauge = |name: &str, help: &str, value: String| {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}\n"
            ));
        };
        gauge(
            "dtx_in_doubt_transactions",
            "Transactions this RM voted Prepared for, outcome not yet known.",
            gauges.in_doubt.to_string(),
        );
        gauge(
            "dtx_open_transactions",
            "Transactions this node still has a part in.",
            gauges.open_transactions.to_string(),
        );
        gauge(
            "dtx_suspected_members",
            "Members the failure detector suspects now.",
            gauges.suspected.to_string(),
        );
        gauge(
            "dtx_draining",
            "1 while the node drains.",
            u8::from(gauges.draining).to_string(),
        );
        text.push_str("# HELP dtx_member_phi Phi of each data node as seen here.\n# TYPE dtx_member_phi gauge\n");
        for (member, phi) in &gauges.phi {
            text.push_str(&format!(
                "dtx_member_phi{{node=\"{node}\",member=\"{member}\"}} {:.3}\n",
                phi.min(PHI_DISPLAY_MAX)
            ));
        }
        text.push_str("# HELP dtx_wal_group_commit_persists Persist outputs made durable by one fsync.\n# TYPE dtx_wal_group_commit_persists histogram\n");
        for (bucket, bound) in self.group_commit_buckets.iter().zip(GROUP_COMMIT_BUCKETS) {
            text.push_str(&format!(
                "dtx_wal_group_commit_persists_bucket{{node=\"{node}\",le=\"{bound}\"}} {bucket}\n"
            ));
        }
        text.push_str(&format!(
            "dtx_wal_group_commit_persists_bucket{{node=\"{node}\",le=\"+Inf\"}} {}\ndtx_wal_group_commit_persists_sum{{node=\"{node}\"}} {}\ndtx_wal_group_commit_persists_count{{node=\"{node}\"}} {}\n",
            self.wal_fsyncs, self.group_commit_sum, self.wal_fsyncs
        ));
        text
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn the_endpoint_answers_routes_and_rejects_bad_requests_without_stopping() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, mut receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender));
        tokio::spawn(async move {
            while let Some(request) = receiver.recv().await {
                match request {
                    ControlRequest::Metrics(reply) => {
                        let _ = reply.send("dtx_up 1\n".to_string());
                    }
                    ControlRequest::Status(reply) | ControlRequest::Drain(reply) => {
                        let _ = reply.send(StatusReport {
                            name: "n1".to_string(),
                            id: 1,
                            uptime_ms: 5,
                            draining: false,
                            open_transactions: 0,
                            phi_threshold: Some(8.0),
                            detection_bound_ms: Some(500),
                            members: Vec::new(),
                            in_doubt: Vec::new(),
                        });
                    }
                }
            }
        });
        let (status, body) = request(address, "GET", "/metrics").await.expect("metrics");
        assert_eq!((status, body.as_str()), (200, "dtx_up 1\n"));
        let report = fetch_status(address).await.expect("status");
        assert_eq!(report.name, "n1");
        assert!(report.render().contains("no transactions in doubt"));
        assert_eq!(request(address, "GET", "/nope").await.expect("404").0, 404);
        assert_eq!(
            request(address, "DELETE", "/drain").await.expect("405").0,
            405
        );
        // Garbage and an oversized head get a 400; the endpoint keeps serving.
        let mut raw = TcpStream::connect(address).await.expect("connect");
        raw.write_all(&vec![b'x'; REQUEST_HEAD_MAX_BYTES + 10])
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"));
        assert_eq!(fetch_status(address).await.expect("still serving").id, 1);
        assert!(bind("0.0.0.0:0".parse().expect("address")).await.is_err());
    }
}
