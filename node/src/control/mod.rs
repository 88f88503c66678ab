//! The control endpoint of a data node: an HTTP/1.1 server (hyper) on loopback serving
//! `GET /status` (JSON: the cluster as this node sees it), `GET /metrics` (OpenMetrics
//! text format, which Prometheus scrapes), `POST /drain` (stop taking new transactions,
//! finish, exit) and, on a node started with `--fault-injection`, `GET /faults` and
//! `POST /faults` (the fault plan in force, see [`crate::faults`] and `docs/faults.md`),
//! plus the client side used by `dtx status`, `dtx drain` and the lab.
//!
//! Hand-written on a tokio `TcpListener` rather than a web framework: a few fixed routes,
//! one request per connection, bounded request size (head and body), time and
//! connection count.
//!
//! One job a file: `server` (HTTP handling and the guards below), `token` (the control
//! token file), `report` (the `/status` report and the `/metrics` text), `client` (the
//! requests `dtx status` and `dtx drain` send).
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
//!    gets 400, as HTTP/1.1 requires. An endpoint bound on the node's own private listen
//!    IP (a node in its own network namespace, `dtx lab run --netns`; see
//!    [`crate::config::parse_control`]) also admits exactly that IP literal, which cannot
//!    be rebound either.
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

mod client;
mod exposition;
mod head_limit;
mod report;
mod server;
mod token;

pub use self::client::{
    fetch_status, get_faults, request, request_with_body, set_faults, start_drain,
};
pub use self::exposition::{
    AbortsByReason, Exposition, Label, METRICS_CONTENT_TYPE, UNEXPLAINED_ABORT,
};
pub use self::report::{
    ClientStatus, Gauges, InDoubtStatus, MemberStatus, Metrics, ResourceReport, StatusReport,
    GROUP_COMMIT_BUCKETS, PHI_DISPLAY_MAX,
};
pub use self::server::{
    bind, serve, CONNECTIONS_MAX, CONNECTION_TIMEOUT, REQUESTS_QUEUED_MAX, REQUEST_HEADERS_MAX,
    REQUEST_HEAD_MAX_BYTES,
};
pub use self::token::{
    create_token_file, read_token_file, TOKEN_CHARACTERS_MAX, TOKEN_CHARACTERS_MIN,
    TOKEN_FILE_MAX_BYTES, TOKEN_RANDOM_BYTES,
};

use crate::faults::{FaultPlan, FaultPlanError, FaultReport};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::oneshot;

/// A request the event loop answers.
#[derive(Debug)]
pub enum ControlRequest {
    /// The cluster as this node sees it.
    Status(oneshot::Sender<StatusReport>),
    /// The metrics in the OpenMetrics text format (see [`Exposition`]).
    Metrics(oneshot::Sender<String>),
    /// Start draining; the answer says how many transactions are still open.
    Drain(oneshot::Sender<StatusReport>),
    /// The fault plan in force and the fault counters.
    Faults(oneshot::Sender<FaultReport>),
    /// Put a fault plan in force (parsed, not yet validated against the config); the
    /// answer is the plan now in force, or why this one was refused.
    SetFaults(
        FaultPlan,
        oneshot::Sender<Result<FaultReport, FaultPlanError>>,
    ),
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
    /// The node answered with an error status (a refused token, a refused fault plan, a
    /// node without `--fault-injection`).
    #[error("{address} refused the request: status {status}: {message}")]
    Refused {
        /// The address.
        address: SocketAddr,
        /// The HTTP status code.
        status: u16,
        /// The node's reason (the answer's body).
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
