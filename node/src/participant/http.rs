//! The HTTP sidecar: a [`Participant`] that is a service anywhere, reached through the HTTP
//! contract of `docs/participants.md` (`POST /dtx/prepare`, `/dtx/commit`, `/dtx/rollback`,
//! `GET /dtx/prepared`, JSON bodies).
//!
//! Every call has a timeout. `prepare` retries a transient failure (connection refused,
//! timeout, broken exchange, 5xx) a bounded number of times with exponential backoff, then
//! reports [`ParticipantError`] (the node votes Aborted with `ServiceUnavailable`); a 4xx is
//! the service's refusal. `finish` and `prepared` make one attempt each: the node asks again
//! with its own backoff, forever for a decided outcome.
//!
//! A service is not trusted to be small: every answer's body is read up to a bound
//! ([`RESPONSE_BODY_MAX_BYTES`]; the prepared list up to [`PREPARED_IDS_MAX`] ids), so that
//! a hostile or broken service cannot make the node allocate without bound.
//!
//! The JSON shapes of operations ([`operation_to_json`], [`operation_from_json`]) live here
//! once, for the node and for `dtx participant check` alike.

use super::{Participant, ParticipantError, PrepareAnswer};
use base64::Engine as _;
use dtx_protocol::{
    cut_text, Key, Operation, Outcome, TxnId, Value, Version, REFUSAL_TEXT_MAX_BYTES,
};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Default timeout of one call, from connecting to the last byte of the answer.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Default number of attempts of one prepare (the first and its retries).
pub const PREPARE_ATTEMPTS_DEFAULT: u32 = 4;

/// Default wait before the first retry of a prepare; it doubles after each retry.
pub const RETRY_DELAY_FIRST_DEFAULT: Duration = Duration::from_millis(100);

/// Default bound on an answer's body (prepare, commit, rollback).
pub const RESPONSE_BODY_MAX_BYTES: usize = 1024 * 1024;

/// Default bound on the ids in one prepared list.
pub const PREPARED_IDS_MAX: usize = 1_000_000;

/// Longest text of a transaction id: `t`, 20 digits, `.`, 20 digits.
const TXN_ID_TEXT_MAX_BYTES: usize = 42;

/// Bytes allowed per listed id beyond its text: quotes, a comma, and whitespace of a
/// pretty-printed list.
const LISTED_ID_OVERHEAD_BYTES: usize = 8;

/// Longest piece of an unexpected answer's body quoted in an error.
const QUOTED_BODY_MAX_BYTES: usize = 256;

/// How a [`HttpParticipant`] calls its service: timeout, retries and answer bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Timeout of one call (connect, request, whole answer).
    pub call_timeout: Duration,
    /// Attempts of one prepare, at least 1 (a value of 0 counts as 1).
    pub prepare_attempts_max: u32,
    /// Wait before the first retry of a prepare; doubled after each retry.
    pub retry_delay_first: Duration,
    /// Largest body read from an answer to prepare, commit or rollback.
    pub response_body_max_bytes: usize,
    /// Most ids one prepared list may hold; its body may be as long as that many ids.
    pub prepared_ids_max: usize,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            call_timeout: CALL_TIMEOUT_DEFAULT,
            prepare_attempts_max: PREPARE_ATTEMPTS_DEFAULT,
            retry_delay_first: RETRY_DELAY_FIRST_DEFAULT,
            response_body_max_bytes: RESPONSE_BODY_MAX_BYTES,
            prepared_ids_max: PREPARED_IDS_MAX,
        }
    }
}

impl HttpOptions {
    /// The bound on a prepared list's body: `prepared_ids_max` ids of the longest form,
    /// each with its quotes, separator and some whitespace, plus one ordinary body.
    pub fn prepared_body_max_bytes(&self) -> usize {
        self.prepared_ids_max
            .saturating_mul(TXN_ID_TEXT_MAX_BYTES + LISTED_ID_OVERHEAD_BYTES)
            .saturating_add(self.response_body_max_bytes)
    }
}

/// Where a service's endpoints are: `http://HOST:PORT` with an optional path prefix (the
/// endpoints are `PREFIX/dtx/prepare` and so on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl {
    /// Host name or IP address (an IPv6 address without its brackets).
    host: String,
    /// TCP port.
    port: u16,
    /// Path before `/dtx/...`, without a trailing `/` (empty for none).
    path_prefix: String,
}

/// Why a text is not a service URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceUrlError {
    /// Not a URL at all.
    #[error("not a URL: {text:?} ({detail})")]
    Unparsable {
        /// The text given.
        text: String,
        /// What the parser said.
        detail: String,
    },
    /// A scheme other than `http` (or none): TLS is not spoken to a sidecar service.
    #[error("{text:?}: the service URL must start with http:// (a sidecar on the same host)")]
    NotHttp {
        /// The text given.
        text: String,
    },
    /// No host.
    #[error("{text:?}: the service URL has no host")]
    NoHost {
        /// The text given.
        text: String,
    },
    /// No port, or port 0.
    #[error("{text:?}: the service URL needs an explicit port (1-65535)")]
    NoPort {
        /// The text given.
        text: String,
    },
    /// A user name or password: the contract has no authentication, and a credential in a
    /// URL would be sent nowhere.
    #[error("{text:?}: the service URL may not carry a user or password")]
    UserInfo {
        /// The text given.
        text: String,
    },
    /// A query: the endpoints are fixed paths.
    #[error("{text:?}: the service URL may not carry a query")]
    Query {
        /// The text given.
        text: String,
    },
}

impl FromStr for ServiceUrl {
    type Err = ServiceUrlError;

    fn from_str(text: &str) -> Result<ServiceUrl, ServiceUrlError> {
        let owned = || text.to_string();
        let uri: hyper::Uri = text
            .parse()
            .map_err(
                |error: hyper::http::uri::InvalidUri| ServiceUrlError::Unparsable {
                    text: owned(),
                    detail: error.to_string(),
                },
            )?;
        if uri.scheme_str() != Some("http") {
            return Err(ServiceUrlError::NotHttp { text: owned() });
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ServiceUrlError::NoHost { text: owned() })?;
        if authority.as_str().contains('@') {
            return Err(ServiceUrlError::UserInfo { text: owned() });
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(ServiceUrlError::NoHost { text: owned() });
        }
        let port = match authority.port_u16() {
            Some(port) if port != 0 => port,
            _ => return Err(ServiceUrlError::NoPort { text: owned() }),
        };
        if uri.query().is_some() {
            return Err(ServiceUrlError::Query { text: owned() });
        }
        Ok(ServiceUrl {
            host: host.to_string(),
            port,
            path_prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path_prefix)
    }
}

impl ServiceUrl {
    /// `host:port` as the `Host` header carries it (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The path of one endpoint (`endpoint` starts with `/`).
    fn path(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.path_prefix)
    }
}

/// Why one call to the service failed: which request, and what happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{request}: {problem}")]
pub struct CallError {
    /// The request, e.g. `POST http://127.0.0.1:8080/dtx/prepare`.
    pub request: String,
    /// What happened.
    pub problem: CallProblem,
}

/// What went wrong in one call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallProblem {
    /// The connection could not be made (refused, unknown host, unreachable).
    #[error("cannot connect: {detail}")]
    Connect {
        /// The operating system's words.
        detail: String,
    },
    /// No whole answer within the call timeout.
    #[error("no answer within {timeout_ms} ms")]
    TimedOut {
        /// The call timeout.
        timeout_ms: u64,
    },
    /// The HTTP exchange broke (the connection closed early, a malformed answer head).
    #[error("HTTP exchange failed: {detail}")]
    Exchange {
        /// hyper's words.
        detail: String,
    },
    /// A 5xx answer: the service failed, and may succeed if asked again.
    #[error("answered {status}: {body}")]
    ServerError {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A status this endpoint may not answer (a 4xx to commit, a 3xx anywhere).
    #[error("answered {status}, which this endpoint may not answer: {body}")]
    UnexpectedStatus {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer's body is longer than its bound.
    #[error("the answer's body is longer than {limit_bytes} bytes")]
    BodyTooLarge {
        /// The bound.
        limit_bytes: usize,
    },
    /// The answer does not mean anything in the contract (bad JSON, a 2xx to prepare that
    /// votes aborted, an id that is not one).
    #[error("answered nonsense: {detail}")]
    BadAnswer {
        /// What is wrong with it.
        detail: String,
    },
}

impl CallError {
    /// True if asking again may succeed: the service was unreachable, slow, or failed
    /// (5xx). A refusal, an unexpected status or nonsense is answered the same again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.problem,
            CallProblem::Connect { .. }
                | CallProblem::TimedOut { .. }
                | CallProblem::Exchange { .. }
                | CallProblem::ServerError { .. }
        )
    }
}

impl From<CallError> for ParticipantError {
    fn from(error: CallError) -> ParticipantError {
        ParticipantError::new(error.to_string())
    }
}

/// A service reached through the HTTP contract, as the resource of a data node.
#[derive(Clone, Debug)]
pub struct HttpParticipant {
    /// Where the endpoints are.
    url: ServiceUrl,
    /// Timeout, retries, bounds.
    options: HttpOptions,
}

/// One answer: its status and its (bounded) body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl HttpParticipant {
    /// A participant calling the service at `url` (`http://HOST:PORT[/PREFIX]`). Nothing
    /// is sent until the first call.
    pub fn new(url: &str, options: HttpOptions) -> Result<HttpParticipant, ServiceUrlError> {
        Ok(HttpParticipant {
            url: url.parse()?,
            options,
        })
    }

    /// The service's URL.
    pub fn url(&self) -> &ServiceUrl {
        &self.url
    }

    /// The options in force.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// `POST /dtx/prepare`, retried on transient failures (see the module doc).
    pub async fn prepare_with_retries(
        &self,
        txn: TxnId,
        operations: &[Operation],
    ) -> Result<PrepareAnswer, CallError> {
        let body = prepare_request_body(txn, operations);
        let attempts = self.options.prepare_attempts_max.max(1);
        let mut delay = self.options.retry_delay_first;
        let mut attempt = 1;
        loop {
            match self.prepare_once(body.clone()).await {
                Err(error) if error.is_transient() && attempt < attempts => {
                    tracing::debug!(%txn, attempt, %error, "prepare failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// One `POST /dtx/prepare` with the body built by [`prepare_request_body`].
    pub async fn prepare_once(&self, body: Vec<u8>) -> Result<PrepareAnswer, CallError> {
        let endpoint = "/dtx/prepare";
        let limit = self.options.response_body_max_bytes;
        let answer = self
            .exchange(Method::POST, endpoint, Some(body), limit)
            .await?;
        let error = |problem| self.error(&Method::POST, endpoint, problem);
        match answer.status.as_u16() {
            200..=299 => match vote_of(&answer.body) {
                Some(vote) if vote != "prepared" => Err(error(CallProblem::BadAnswer {
                    detail: format!("a 2xx answer with vote {vote:?}"),
                })),
                _ => Ok(PrepareAnswer::Prepared),
            },
            400..=499 => Ok(PrepareAnswer::Refused {
                reason: refusal_reason(answer.status, &answer.body),
            }),
            _ => Err(error(unsuccessful(&answer))),
        }
    }

    /// One `POST /dtx/commit` or `POST /dtx/rollback` of `txn`: a 2xx is done.
    pub async fn finish_once(&self, txn: TxnId, outcome: Outcome) -> Result<(), CallError> {
        let endpoint = match outcome {
            Outcome::Commit => "/dtx/commit",
            Outcome::Abort => "/dtx/rollback",
        };
        let body = finish_request_body(txn);
        let limit = self.options.response_body_max_bytes;
        let answer = self
            .exchange(Method::POST, endpoint, Some(body), limit)
            .await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(self.error(&Method::POST, endpoint, unsuccessful(&answer)))
    }

    /// One `GET /dtx/prepared`: the ids the service holds prepared, as listed (a duplicate
    /// stays: a conformance check wants to see it).
    pub async fn list_prepared(&self) -> Result<Vec<TxnId>, CallError> {
        let endpoint = "/dtx/prepared";
        let limit = self.options.prepared_body_max_bytes();
        let answer = self.exchange(Method::GET, endpoint, None, limit).await?;
        let error = |problem| self.error(&Method::GET, endpoint, problem);
        if !answer.status.is_success() {
            return Err(error(unsuccessful(&answer)));
        }
        parse_prepared_list(&answer.body, self.options.prepared_ids_max)
            .map_err(|detail| error(CallProblem::BadAnswer { detail }))
    }

    /// One request and its whole answer, within the call timeout; the body is read up to
    /// `body_max_bytes`.
    async fn exchange(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
        body_max_bytes: usize,
    ) -> Result<Answer, CallError> {
        let timeout = self.options.call_timeout;
        let exchange =
            self.exchange_without_timeout(method.clone(), endpoint, body, body_max_bytes);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result.map_err(|problem| self.error(&method, endpoint, problem)),
            Err(_elapsed) => Err(self.error(
                &method,
                endpoint,
                CallProblem::TimedOut {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            )),
        }
    }

    async fn exchange_without_timeout(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
        body_max_bytes: usize,
    ) -> Result<Answer, CallProblem> {
        let mut builder = Request::builder()
            .method(method)
            .uri(self.url.path(endpoint))
            .header(header::HOST, self.url.authority())
            .header(header::CONNECTION, "close")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| CallProblem::Exchange {
                detail: error.to_string(),
            })?;
        let stream = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|error| CallProblem::Connect {
                detail: error.to_string(),
            })?;
        let exchange_error = |error: hyper::Error| CallProblem::Exchange {
            detail: error.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(exchange_error)?;
        // The connection task ends when the service closes the connection after its
        // answer (we asked it to); aborted below in case it does not.
        let driven = tokio::spawn(connection);
        let result = read_answer(&mut sender, request, body_max_bytes).await;
        driven.abort();
        result
    }

    fn error(&self, method: &Method, endpoint: &str, problem: CallProblem) -> CallError {
        CallError {
            request: format!("{method} {}{endpoint}", self.url),
            problem,
        }
    }
}

/// Sends `request` and reads the answer's body up to `body_max_bytes`.
async fn read_answer(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    body_max_bytes: usize,
) -> Result<Answer, CallProblem> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| CallProblem::Exchange {
            detail: error.to_string(),
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), body_max_bytes)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                CallProblem::BodyTooLarge {
                    limit_bytes: body_max_bytes,
                }
            } else {
                CallProblem::Exchange {
                    detail: error.to_string(),
                }
            }
        })?
        .to_bytes();
    Ok(Answer { status, body })
}

impl Participant for HttpParticipant {
    fn prepare<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<PrepareAnswer, ParticipantError>> {
        Box::pin(async move { Ok(self.prepare_with_retries(txn, operations).await?) })
    }

    fn finish(&self, txn: TxnId, outcome: Outcome) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async move { Ok(self.finish_once(txn, outcome).await?) })
    }

    fn prepared(&self) -> BoxFuture<'_, Result<Vec<TxnId>, ParticipantError>> {
        Box::pin(async move { Ok(self.list_prepared().await?) })
    }
}

/// A non-2xx answer where only a 2xx is right: 5xx is a transient server error, the rest
/// is unexpected.
fn unsuccessful(answer: &Answer) -> CallProblem {
    let status = answer.status.as_u16();
    let body = cut_text(
        String::from_utf8_lossy(&answer.body).trim(),
        QUOTED_BODY_MAX_BYTES,
    );
    if answer.status.is_server_error() {
        CallProblem::ServerError { status, body }
    } else {
        CallProblem::UnexpectedStatus { status, body }
    }
}

/// The `vote` field of a JSON object body, if it has one.
fn vote_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("vote")?.as_str()?.to_string())
}

/// A refusal's reason: the body's `reason` if it has a non-empty one, else the status line
/// (e.g. `409 Conflict`); cut to [`REFUSAL_TEXT_MAX_BYTES`].
fn refusal_reason(status: StatusCode, body: &[u8]) -> String {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("reason")?.as_str().map(str::to_string))
        .filter(|reason| !reason.trim().is_empty());
    let reason = from_body.unwrap_or_else(|| match status.canonical_reason() {
        Some(words) => format!("{} {words}", status.as_str()),
        None => status.as_str().to_string(),
    });
    cut_text(&reason, REFUSAL_TEXT_MAX_BYTES)
}

/// The body of `POST /dtx/prepare`: `{"txn": "t1.2", "operations": [...]}`.
pub fn prepare_request_body(txn: TxnId, operations: &[Operation]) -> Vec<u8> {
    let operations: Vec<serde_json::Value> = operations.iter().map(operation_to_json).collect();
    json!({ "txn": txn.to_string(), "operations": operations })
        .to_string()
        .into_bytes()
}

/// The body of `POST /dtx/commit` and `POST /dtx/rollback`: `{"txn": "t1.2"}`.
pub fn finish_request_body(txn: TxnId) -> Vec<u8> {
    json!({ "txn": txn.to_string() }).to_string().into_bytes()
}

/// An operation in the contract's JSON shape (`docs/participants.md`, "Operations"). A
/// call's `args` are its bytes parsed as JSON; bytes that are not JSON go as a JSON string
/// (invalid UTF-8 replaced).
pub fn operation_to_json(operation: &Operation) -> serde_json::Value {
    match operation {
        Operation::Call {
            target,
            action,
            args,
        } => {
            let args = serde_json::from_slice(&args.0).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&args.0).into_owned())
            });
            json!({ "kind": "call", "target": target.as_str(), "action": action, "args": args })
        }
        Operation::Write { key, value } => with_value("write", key, value),
        Operation::Update { key, value } => with_value("update", key, value),
        Operation::Delete { key } => json!({ "kind": "delete", "key": key.as_str() }),
        Operation::Read { key, expected } => json!({
            "kind": "read",
            "key": key.as_str(),
            "expected_version": expected.map(|version| version.0),
        }),
        Operation::ReadForUpdate { key } => {
            json!({ "kind": "read_for_update", "key": key.as_str() })
        }
    }
}

/// A write or update: `value` if the bytes are UTF-8, else `value_base64`.
fn with_value(kind: &str, key: &Key, value: &Value) -> serde_json::Value {
    match value.as_text() {
        Some(text) => json!({ "kind": kind, "key": key.as_str(), "value": text }),
        None => json!({
            "kind": kind,
            "key": key.as_str(),
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&value.0),
        }),
    }
}

/// Why a JSON value is not an operation in the contract's shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an operation ({detail}): {json}")]
pub struct OperationJsonError {
    /// What is missing or wrong.
    pub detail: String,
    /// The JSON, cut to 256 bytes.
    pub json: String,
}

/// The operation a JSON value in the contract's shape describes (the inverse of
/// [`operation_to_json`]; a call's `args` become their JSON text).
pub fn operation_from_json(json: &serde_json::Value) -> Result<Operation, OperationJsonError> {
    let error = |detail: &str| OperationJsonError {
        detail: detail.to_string(),
        json: cut_text(&json.to_string(), QUOTED_BODY_MAX_BYTES),
    };
    let text = |field: &str| {
        json.get(field)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| error(&format!("`{field}` must be a string")))
    };
    let key = || text("key").map(Key::new);
    let value = || match (json.get("value"), json.get("value_base64")) {
        (Some(serde_json::Value::String(text)), None) => Ok(Value::new(text.as_bytes())),
        (None, Some(serde_json::Value::String(encoded))) => {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Value::new)
                .map_err(|decode| error(&format!("`value_base64`: {decode}")))
        }
        _ => Err(error("needs a string `value` or `value_base64`")),
    };
    match text("kind")? {
        "call" => Ok(Operation::Call {
            target: Key::new(text("target")?),
            action: text("action")?.to_string(),
            args: Value::new(
                json.get("args")
                    .ok_or_else(|| error("a call needs `args`"))?
                    .to_string(),
            ),
        }),
        "write" => Ok(Operation::Write {
            key: key()?,
            value: value()?,
        }),
        "update" => Ok(Operation::Update {
            key: key()?,
            value: value()?,
        }),
        "delete" => Ok(Operation::Delete { key: key()? }),
        "read" => {
            let expected = match json.get("expected_version") {
                None | Some(serde_json::Value::Null) => None,
                Some(number) => {
                    Some(Version(number.as_u64().ok_or_else(|| {
                        error("`expected_version` must be a number or null")
                    })?))
                }
            };
            Ok(Operation::Read {
                key: key()?,
                expected,
            })
        }
        "read_for_update" => Ok(Operation::ReadForUpdate { key: key()? }),
        _ => Err(error(
            "`kind` must be call, write, update, delete, read or read_for_update",
        )),
    }
}

/// The ids of a `{"prepared": [...]}` body, at most `ids_max` of them.
pub fn parse_prepared_list(body: &[u8], ids_max: usize) -> Result<Vec<TxnId>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let ids = PreparedBody { ids_max }
        .deserialize(&mut deserializer)
        .map_err(|error| error.to_string())?;
    deserializer.end().map_err(|error| error.to_string())?;
    Ok(ids)
}

/// Reads a `{"prepared": [...]}` object; other fields are ignored.
struct PreparedBody {
    ids_max: usize,
}

impl<'de> DeserializeSeed<'de> for PreparedBody {
    type Value = Vec<TxnId>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<TxnId>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PreparedBody {
    type Value = Vec<TxnId>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object {\"prepared\": [transaction ids]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<TxnId>, A::Error> {
        let mut ids = None;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if field == "prepared" && ids.is_none() {
                ids = Some(map.next_value_seed(PreparedIds {
                    ids_max: self.ids_max,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        ids.ok_or_else(|| serde::de::Error::missing_field("prepared"))
    }
}

/// Reads the list of ids, refusing more than `ids_max`.
struct PreparedIds {
    ids_max: usize,
}

impl<'de> DeserializeSeed<'de> for PreparedIds {
    type Value = Vec<TxnId>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<TxnId>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PreparedIds {
    type Value = Vec<TxnId>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of transaction ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<TxnId>, A::Error> {
        let mut ids = Vec::new();
        while let Some(ListedId(id)) = sequence.next_element()? {
            if ids.len() == self.ids_max {
                return Err(serde::de::Error::custom(format!(
                    "more than {} prepared ids",
                    self.ids_max
                )));
            }
            ids.push(id);
        }
        Ok(ids)
    }
}

/// One listed id, parsed from its text.
struct ListedId(TxnId);

impl<'de> serde::Deserialize<'de> for ListedId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ListedId, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = ListedId;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a transaction id t<client>.<sequence>")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ListedId, E> {
                text.parse().map(ListedId).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests;
