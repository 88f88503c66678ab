//! The control endpoint of a data node: a tiny HTTP/1.1 server on loopback serving
//! `GET /status` (JSON: the cluster as this node sees it), `GET /metrics` (Prometheus text
//! format) and `POST /drain` (stop taking new transactions, finish, exit), plus the client
//! side used by `dtx status` and `dtx drain`.
//!
//! Hand-written on a tokio `TcpListener` rather than a web framework: three fixed routes,
//! one request per connection, bounded request size, time and connection count.
//!
//! # Who may drive it
//!
//! Binding loopback keeps the network out, but not the web pages a browser on the same
//! host shows: a page can send a "simple" cross-origin POST to `http://127.0.0.1:PORT`
//! (no-cors), and with DNS rebinding a page can even read answers, because the browser then
//! believes `127.0.0.1` is the page's own origin. Every request is therefore checked before
//! anything reaches the event loop, in this order:
//!
//! 1. `Host` must be present, once, and name a loopback host: `127.0.0.1` (any of
//!    127.0.0.0/8), `[::1]` or `localhost`, with or without a port. A rebound name
//!    (`Host: evil.example`) gets 421 Misdirected Request; a missing or repeated `Host`
//!    gets 400, as HTTP/1.1 requires.
//! 2. A request with an `Origin` header gets 403: browsers send it on cross-origin POSTs
//!    (and on every fetch with a CORS mode); `dtx` never does. So does a `Sec-Fetch-Site`
//!    other than `none` (a request the user did not type in the address bar).
//! 3. Every method other than `GET` changes state or is not ours (today `POST /drain`; any
//!    future route is covered without a rule of its own) and needs
//!    `Authorization: Bearer <token>`, the token being the content of the node's control
//!    token file (0600, see [`create_token_file`] and [`read_token_file`]). Tokens are
//!    compared in constant time. A node started without a token refuses them all (403).
//!
//! `GET /status` and `GET /metrics` stay open on loopback without a token: Prometheus
//! scrapers and `dtx status` read them on every host, they change nothing, and what they
//! show (members, counters, in-doubt transaction ids) is no secret to a local user who can
//! read the node's log anyway. A web page cannot read them: a cross-origin read is blocked
//! by the browser's same-origin policy, and a rebinding attack by the `Host` check.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Largest request head read (request line and headers); bodies are ignored.
pub const REQUEST_HEAD_MAX_BYTES: usize = 8192;

/// Header lines one request may carry at most.
pub const REQUEST_HEADERS_MAX: usize = 64;

/// A connection must deliver its request head and take its answer within this time.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Control connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 32;

/// Requests queued for the event loop at most.
pub const REQUESTS_QUEUED_MAX: usize = 64;

/// Random bytes in a token [`create_token_file`] writes (hex-encoded: twice as many
/// characters), as many as a 256-bit key.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// Characters a control token has at least (a token written by hand must not be guessable).
pub const TOKEN_CHARACTERS_MIN: usize = 32;

/// Characters a control token has at most (it travels in one header line).
pub const TOKEN_CHARACTERS_MAX: usize = 1024;

/// Bytes of a token file read at most (a token, a line end and some slack).
pub const TOKEN_FILE_MAX_BYTES: u64 = 4096;

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

/// Serves control connections until the event loop goes away. `token` guards every
/// request other than `GET` (see the module doc); `None` refuses them all, with a message
/// that the node has no control token.
pub async fn serve(
    listener: TcpListener,
    requests: mpsc::Sender<ControlRequest>,
    token: Option<String>,
) {
    let token: Option<Arc<str>> = token.map(Arc::from);
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
        let token = token.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answered = answer(stream, requests, token.as_deref());
            match tokio::time::timeout(CONNECTION_TIMEOUT, answered).await {
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
    token: Option<&str>,
) -> std::io::Result<()> {
    let text = match read_head(&mut stream).await? {
        Ok(text) => text,
        Err(reason) => return respond(&mut stream, 400, "text/plain", &reason).await,
    };
    let head = match parse_head(&text).and_then(|head| admit(&head, token).map(|()| head)) {
        Ok(head) => head,
        Err(refusal) => {
            // Debug, not warn: refusals cost the sender nothing, and a log line each would
            // let anyone on the host flood the log.
            tracing::debug!(%refusal, "control request refused");
            let body = refusal.to_string();
            return respond(&mut stream, refusal.status(), "text/plain", &body).await;
        }
    };
    match (head.method, head.path) {
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

/// The parts of a request head the endpoint decides on.
#[derive(Debug, Default, PartialEq)]
struct RequestHead<'a> {
    method: &'a str,
    path: &'a str,
    /// The `Host` header.
    host: Option<&'a str>,
    /// An `Origin` header was present (its value does not matter: any is refused).
    origin: bool,
    /// The `Sec-Fetch-Site` header.
    fetch_site: Option<&'a str>,
    /// The `Authorization` header.
    authorization: Option<&'a str>,
}

/// Why a request was refused before it reached the event loop; the text is the answer's
/// body. Nothing the sender wrote is echoed back.
#[derive(Debug, PartialEq, thiserror::Error)]
enum Refusal {
    /// Not a request head this endpoint can read.
    #[error("malformed request: {0}\n")]
    Malformed(&'static str),
    /// No `Host` (HTTP/1.1 requires one).
    #[error("a Host header naming a loopback host is required\n")]
    MissingHost,
    /// `Host` names something else than loopback: a rebound DNS name, or a proxy's target.
    #[error("the Host header must name a loopback host (127.0.0.1, [::1] or localhost)\n")]
    ForeignHost,
    /// An `Origin` header: a browser sent this on behalf of a web page.
    #[error("requests with an Origin header (from web pages) are refused\n")]
    CrossOrigin,
    /// `Sec-Fetch-Site` other than `none`: a browser sent this on behalf of a web page.
    #[error("requests a browser made on behalf of a site (Sec-Fetch-Site) are refused\n")]
    FetchSite,
    /// A state-changing request to a node started without a control token.
    #[error("this node has no control token: requests other than GET are refused\n")]
    NoToken,
    /// A state-changing request without a bearer token.
    #[error("missing Authorization: Bearer <token> (the node's control token file)\n")]
    MissingToken,
    /// A state-changing request with another token.
    #[error("wrong control token\n")]
    WrongToken,
}

impl Refusal {
    /// The HTTP status code of the answer.
    fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) | Refusal::MissingHost => 400,
            Refusal::MissingToken | Refusal::WrongToken => 401,
            Refusal::CrossOrigin | Refusal::FetchSite | Refusal::NoToken => 403,
            Refusal::ForeignHost => 421,
        }
    }
}

/// Parses the request line and the headers that decide admission. Header names are case
/// insensitive; a header that decides must not be repeated (two `Host`s could be read
/// differently by two parsers).
fn parse_head(text: &str) -> Result<RequestHead<'_>, Refusal> {
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(Refusal::Malformed(
            "the request line is not METHOD PATH VERSION",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refusal::Malformed("only HTTP/1.x is served"));
    }
    let mut head = RequestHead {
        method,
        path,
        ..RequestHead::default()
    };
    for (index, line) in lines.take_while(|line| !line.is_empty()).enumerate() {
        if index >= REQUEST_HEADERS_MAX {
            return Err(Refusal::Malformed("too many header lines"));
        }
        if line.starts_with([' ', '\t']) {
            return Err(Refusal::Malformed("folded header line"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(Refusal::Malformed("a header line without a colon"))?;
        if name.is_empty() || name.contains(|character: char| character.is_ascii_whitespace()) {
            return Err(Refusal::Malformed("a bad header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        let slot = if name.eq_ignore_ascii_case("host") {
            &mut head.host
        } else if name.eq_ignore_ascii_case("sec-fetch-site") {
            &mut head.fetch_site
        } else if name.eq_ignore_ascii_case("authorization") {
            &mut head.authorization
        } else {
            head.origin |= name.eq_ignore_ascii_case("origin");
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(Refusal::Malformed(
                "a repeated Host, Sec-Fetch-Site or Authorization header",
            ));
        }
    }
    Ok(head)
}

/// Decides whether a parsed request may reach the event loop (see the module doc).
fn admit(head: &RequestHead<'_>, token: Option<&str>) -> Result<(), Refusal> {
    let host = head.host.ok_or(Refusal::MissingHost)?;
    if !is_loopback_host(host) {
        return Err(Refusal::ForeignHost);
    }
    if head.origin {
        return Err(Refusal::CrossOrigin);
    }
    if head
        .fetch_site
        .is_some_and(|site| !site.eq_ignore_ascii_case("none"))
    {
        return Err(Refusal::FetchSite);
    }
    if head.method == "GET" {
        return Ok(());
    }
    let token = token.ok_or(Refusal::NoToken)?;
    let presented = head
        .authorization
        .and_then(bearer_credential)
        .ok_or(Refusal::MissingToken)?;
    // Constant time in the content (the length of a token is no secret: 64 characters
    // when `create_token_file` wrote it).
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// The credential of an `Authorization: Bearer <credential>` value (scheme case insensitive).
fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim_matches([' ', '\t']))
}

/// True if a `Host` value names loopback: an IPv4 loopback literal, `[::1]` or `localhost`
/// (any case), each with or without a port. IP literals cannot be rebound; `localhost`
/// resolves locally, not through the attacker's DNS.
fn is_loopback_host(host: &str) -> bool {
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok && inside.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    let name = match host.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// True for a decimal port number (digits only: `u16::from_str` would also take `+80`).
fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

/// True if `token` can be a control token: [`TOKEN_CHARACTERS_MIN`] to
/// [`TOKEN_CHARACTERS_MAX`] visible ASCII characters (it travels in a header line, so no
/// space, control character or line break).
fn is_well_formed_token(token: &str) -> bool {
    (TOKEN_CHARACTERS_MIN..=TOKEN_CHARACTERS_MAX).contains(&token.len())
        && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Creates a control token file at `path`: [`TOKEN_RANDOM_BYTES`] random bytes from the
/// operating system, hex-encoded, one line. Created with mode 0600 and never over an
/// existing file (`create_new`), so that a token is never replaced behind a running
/// node's back and never readable by other users, not even for a moment.
pub fn create_token_file(path: &Path) -> Result<(), ControlError> {
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|error| ControlError::Random(error.to_string()))?;
    let mut line: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    line.push('\n');
    let file_error = |cause| ControlError::TokenFile {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    if let Err(cause) = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
    {
        // A partial token would be refused as malformed at every start: leave no file.
        let _ = std::fs::remove_file(path);
        return Err(file_error(cause));
    }
    Ok(())
}

/// Reads the control token from the file at `path`. Refuses a file that group or others
/// may access in any way (`mode & 0o077 != 0`), as ssh does with private keys: a token
/// others could read authenticates no one, and silently using it would hide that. The
/// mode is read from the opened file, not the path, so a swap in between changes nothing.
pub fn read_token_file(path: &Path) -> Result<String, ControlError> {
    let file_error = |cause| ControlError::TokenFile {
        path: path.to_path_buf(),
        cause,
    };
    let malformed = || ControlError::TokenMalformed {
        path: path.to_path_buf(),
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let metadata = file.metadata().map_err(file_error)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ControlError::TokenFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !metadata.is_file() {
        return Err(malformed());
    }
    let mut bytes = Vec::new();
    file.take(TOKEN_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(file_error)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let token = text.trim_end_matches(['\n', '\r']);
    if !is_well_formed_token(token) {
        return Err(malformed());
    }
    Ok(token.to_string())
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
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        _ => "Service Unavailable",
    };
    // A 401 names the scheme it wants (RFC 9110 section 11.6.1).
    let challenge = if status == 401 {
        "WWW-Authenticate: Bearer realm=\"dtx control\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nX-Content-Type-Options: nosniff\r\n{challenge}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    /// The operating system gave no random bytes for a new token.
    #[error("cannot draw random bytes for a control token: {0}")]
    Random(String),
    /// The token file could not be created, read or written.
    #[error("control token file {}: {cause}", .path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The token file may be accessed by group or others.
    #[error(
        "control token file {} may be accessed by group or others (mode {mode:04o}); run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    TokenFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file does not hold one well-formed token.
    #[error(
        "control token file {} does not hold a token ({TOKEN_CHARACTERS_MIN} to {TOKEN_CHARACTERS_MAX} visible ASCII characters on one line)",
        .path.display()
    )]
    TokenMalformed {
        /// The file.
        path: PathBuf,
    },
    /// A token given to the client cannot be sent (it would break the header line).
    #[error("a control token is {TOKEN_CHARACTERS_MIN} to {TOKEN_CHARACTERS_MAX} visible ASCII characters")]
    TokenCharacters,
}

/// Sends one request to a control endpoint, with `Authorization: Bearer <token>` if a
/// token is given; returns the status code and the body.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), ControlError> {
    if token.is_some_and(|token| !is_well_formed_token(token)) {
        return Err(ControlError::TokenCharacters);
    }
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let unreachable = |cause| ControlError::Unreachable { address, cause };
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\nContent-Length: 0\r\n\r\n");
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
    parse_report(address, request(address, "GET", "/status", None).await?)
}

/// `POST /drain` to the node at `address`, authorized by the node's control `token` (the
/// content of its token file, see [`read_token_file`]).
pub async fn start_drain(address: SocketAddr, token: &str) -> Result<StatusReport, ControlError> {
    parse_report(
        address,
        request(address, "POST", "/drain", Some(token)).await?,
    )
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

    /// A status report for a fake event loop to answer with.
    fn report(draining: bool) -> StatusReport {
        StatusReport {
            name: "n1".to_string(),
            id: 1,
            uptime_ms: 5,
            draining,
            open_transactions: 0,
            phi_threshold: Some(8.0),
            detection_bound_ms: Some(500),
            members: Vec::new(),
            in_doubt: Vec::new(),
            store_bytes: 2048,
            storage_quota_bytes: Some(4096),
            storage_full: draining,
            quarantined: false,
            client_sessions: Some(3),
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
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// An endpoint guarded by `token`, and the receiving end of its event-loop channel
    /// (nothing answers it: a test sees exactly which requests got through).
    async fn endpoint(token: Option<&str>) -> (SocketAddr, mpsc::Receiver<ControlRequest>) {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, token.map(str::to_string)));
        (address, receiver)
    }

    /// Sends `head` as is and returns the whole answer.
    async fn raw_exchange(address: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A `POST /drain` from 127.0.0.1 with `extra` header lines.
    fn drain_head(address: SocketAddr, host: &str, extra: &str) -> String {
        let host = host.replace("ADDRESS", &address.to_string());
        format!("POST /drain HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\n\r\n")
    }

    #[tokio::test]
    async fn drain_requests_a_web_page_or_a_stranger_can_make_are_refused_before_the_event_loop() {
        let (address, mut requests) = endpoint(Some(TOKEN)).await;
        let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
        let refused = [
            // No token, a wrong one, an empty one, another scheme.
            (drain_head(address, "ADDRESS", ""), "401"),
            (
                drain_head(
                    address,
                    "ADDRESS",
                    &format!("Authorization: Bearer {}\r\n", TOKEN.replace('0', "1")),
                ),
                "401",
            ),
            (
                drain_head(address, "ADDRESS", "Authorization: Bearer \r\n"),
                "401",
            ),
            (
                drain_head(
                    address,
                    "ADDRESS",
                    &format!("Authorization: Basic {TOKEN}\r\n"),
                ),
                "401",
            ),
            // The right token, but from a web page: an Origin, a cross-site fetch.
            (
                drain_head(
                    address,
                    "ADDRESS",
                    &format!("{bearer}Origin: http://evil.example\r\n"),
                ),
                "403",
            ),
            (
                drain_head(address, "ADDRESS", &format!("{bearer}origin: null\r\n")),
                "403",
            ),
            (
                drain_head(
                    address,
                    "ADDRESS",
                    &format!("{bearer}Sec-Fetch-Site: cross-site\r\n"),
                ),
                "403",
            ),
            // The right token, but a rebound name, a lookalike, no Host, two Hosts.
            (drain_head(address, "evil.example", &bearer), "421"),
            (
                drain_head(address, "127.0.0.1.evil.example:80", &bearer),
                "421",
            ),
            (
                drain_head(address, "localhost.evil.example", &bearer),
                "421",
            ),
            (drain_head(address, "[::ffff:127.0.0.1]", &bearer), "421"),
            (drain_head(address, "127.0.0.1:+80", &bearer), "421"),
            (format!("POST /drain HTTP/1.1\r\n{bearer}\r\n"), "400"),
            (
                drain_head(
                    address,
                    "ADDRESS",
                    &format!("{bearer}Host: evil.example\r\n"),
                ),
                "400",
            ),
            // Two tokens: which one would a proxy check?
            (
                drain_head(address, "ADDRESS", &format!("{bearer}{bearer}")),
                "400",
            ),
        ];
        for (head, status) in &refused {
            let answer = raw_exchange(address, head).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{head:?} answered {answer:?}"
            );
            assert!(
                !answer.contains("evil"),
                "the sender's words are not echoed: {answer:?}"
            );
        }
        assert!(
            requests.try_recv().is_err(),
            "a refused request reached the event loop"
        );
        // The client library without a token is refused the same way.
        let (status, body) = request(address, "POST", "/drain", None)
            .await
            .expect("answer");
        assert_eq!(status, 401, "{body}");
        assert!(matches!(
            start_drain(address, &TOKEN.replace('a', "b")).await,
            Err(ControlError::BadAnswer { .. })
        ));
        assert!(requests.try_recv().is_err());

        // The right token from loopback, with each loopback spelling, drains.
        for host in [
            "ADDRESS",
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            "[::1]",
            "[::1]:9",
        ] {
            let head = drain_head(address, host, &format!("{bearer}Sec-Fetch-Site: none\r\n"));
            let exchange = tokio::spawn(async move { raw_exchange(address, &head).await });
            let Some(ControlRequest::Drain(reply)) = requests.recv().await else {
                panic!("an authorized drain from Host {host} reaches the event loop");
            };
            reply.send(report(true)).expect("reply");
            let answer = exchange.await.expect("exchange");
            assert!(answer.starts_with("HTTP/1.1 200 "), "{host}: {answer:?}");
        }
        let drain = tokio::spawn(async move { start_drain(address, TOKEN).await });
        let Some(ControlRequest::Drain(reply)) = requests.recv().await else {
            panic!("start_drain with the token reaches the event loop");
        };
        reply.send(report(true)).expect("reply");
        assert!(drain.await.expect("drain").expect("drained").draining);
    }

    #[tokio::test]
    async fn a_node_without_a_token_refuses_every_post_but_serves_status_without_one() {
        let (address, mut requests) = endpoint(None).await;
        let (status, body) = request(address, "POST", "/drain", Some(TOKEN))
            .await
            .expect("answer");
        assert_eq!(status, 403);
        assert!(body.contains("no control token"), "{body}");
        assert!(requests.try_recv().is_err());
        let status = tokio::spawn(async move { fetch_status(address).await });
        let Some(ControlRequest::Status(reply)) = requests.recv().await else {
            panic!("GET /status reaches the event loop without a token");
        };
        reply.send(report(false)).expect("reply");
        assert_eq!(status.await.expect("status").expect("report").id, 1);
        // Reads from a web page are refused too, even without a token at stake.
        let answer = raw_exchange(
            address,
            "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 421 "), "{answer:?}");
        assert!(requests.try_recv().is_err());
    }

    /// A fresh path in the temporary directory for a test file.
    fn scratch_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("dtx-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_created_token_file_is_private_fresh_and_read_back() {
        let path = scratch_path("created");
        create_token_file(&path).expect("create");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = read_token_file(&path).expect("read");
        assert_eq!(token.len(), 2 * TOKEN_RANDOM_BYTES);
        assert!(token.bytes().all(|byte| byte.is_ascii_hexdigit()));
        // Never over an existing file: a running node's token is not replaced.
        assert!(matches!(
            create_token_file(&path),
            Err(ControlError::TokenFile { .. })
        ));
        assert_eq!(read_token_file(&path).expect("read again"), token);
        let other = scratch_path("created-other");
        create_token_file(&other).expect("create another");
        assert_ne!(read_token_file(&other).expect("read"), token);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&other);
    }

    #[test]
    fn a_token_file_others_may_read_is_refused_with_the_chmod_to_run() {
        let path = scratch_path("readable");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write");
        for mode in [0o644, 0o640, 0o604, 0o601, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let error = read_token_file(&path).expect_err("a readable token file is refused");
            assert!(
                matches!(error, ControlError::TokenFilePermissions { .. }),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&path).expect("0600 is accepted"), TOKEN);
        // Too short, a space inside, two lines: not a token.
        for content in [
            "short\n",
            "0123456789abcdef 0123456789abcdef0123456789abcdef\n",
            &format!("{TOKEN}\n{TOKEN}\n"),
        ] {
            std::fs::write(&path, content).expect("write");
            assert!(matches!(
                read_token_file(&path),
                Err(ControlError::TokenMalformed { .. })
            ));
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn loopback_hosts_are_told_from_names_a_page_could_rebind() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3",
            "localhost",
            "LocalHost:1",
            "[::1]",
            "[::1]:65535",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.",
            "localhost:",
            "localhost:99999",
            "127.0.0.1:80:80",
            "[::1",
            "[::1]80",
            "[::2]",
            "0.0.0.0",
            "10.0.0.1",
            "[::ffff:127.0.0.1]",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn the_endpoint_answers_routes_and_rejects_bad_requests_without_stopping() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, mut receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, Some(TOKEN.to_string())));
        tokio::spawn(async move {
            while let Some(request) = receiver.recv().await {
                match request {
                    ControlRequest::Metrics(reply) => {
                        let _ = reply.send("dtx_up 1\n".to_string());
                    }
                    ControlRequest::Status(reply) | ControlRequest::Drain(reply) => {
                        let _ = reply.send(report(false));
                    }
                }
            }
        });
        let (status, body) = request(address, "GET", "/metrics", None)
            .await
            .expect("metrics");
        assert_eq!((status, body.as_str()), (200, "dtx_up 1\n"));
        let report = fetch_status(address).await.expect("status");
        assert_eq!(report.name, "n1");
        assert!(report.render().contains("no transactions in doubt"));
        assert_eq!(
            request(address, "GET", "/nope", None).await.expect("404").0,
            404
        );
        // Methods other than GET need the token before anything else is said.
        assert_eq!(
            request(address, "DELETE", "/drain", None)
                .await
                .expect("401")
                .0,
            401
        );
        assert_eq!(
            request(address, "DELETE", "/drain", Some(TOKEN))
                .await
                .expect("405")
                .0,
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
