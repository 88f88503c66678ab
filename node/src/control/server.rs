//! The control endpoint's server: hyper's HTTP/1.1 on loopback (one request per
//! connection; bounded head size, time and connections) and the guards every request
//! passes before it reaches the event loop (see the module doc of [`crate::control`]).

use super::head_limit::HeadLimit;
use super::{ControlError, ControlRequest, METRICS_CONTENT_TYPE};
use crate::faults::{FaultPlan, FaultPlanError, FAULT_PLAN_BODY_MAX_BYTES};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Largest request head read (request line and headers); bodies are ignored, except
/// that of `POST /faults` (at most [`FAULT_PLAN_BODY_MAX_BYTES`]).
pub const REQUEST_HEAD_MAX_BYTES: usize = 8192;

/// Header lines one request may carry at most.
pub const REQUEST_HEADERS_MAX: usize = 64;

/// A connection must deliver its request head and take its answer within this time.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Control connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 32;

/// Requests queued for the event loop at most.
pub const REQUESTS_QUEUED_MAX: usize = 64;

/// hyper's read buffer: above [`REQUEST_HEAD_MAX_BYTES`] (and hyper's own minimum), so that
/// [`HeadLimit`] refuses an oversized head with 400 before hyper would with 431.
const PARSER_BUFFER_BYTES: usize = 2 * REQUEST_HEAD_MAX_BYTES;

/// An answer of the endpoint.
type Answer = Response<Full<Bytes>>;

/// Binds the control endpoint on `address` (which must be loopback, or a private IPv4
/// address for a node in its own network namespace: [`crate::config::parse_control`]).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ControlError> {
    if !crate::config::is_control_ip(address.ip()) {
        return Err(ControlError::NotLoopback(address));
    }
    TcpListener::bind(address)
        .await
        .map_err(|cause| ControlError::Bind { address, cause })
}

/// Serves control connections until the event loop goes away. `token` guards every
/// request other than `GET` (see the module doc); `None` refuses them all, with a message
/// that the node has no control token. `fault_injection` (the node's `--fault-injection`
/// flag) opens `/faults`; without it `/faults` answers 403 with that reason.
pub async fn serve(
    listener: TcpListener,
    requests: mpsc::Sender<ControlRequest>,
    token: Option<String>,
    fault_injection: bool,
) {
    let token: Option<Arc<str>> = token.map(Arc::from);
    // The `Host` check also accepts the bound IP itself when it is not loopback (a node
    // in its own network namespace is reached on its private address).
    let own_ip = listener
        .local_addr()
        .ok()
        .map(|address| address.ip())
        .filter(|ip| !ip.is_loopback());
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
            let answered = answer_connection(stream, requests, token, fault_injection, own_ip);
            match tokio::time::timeout(CONNECTION_TIMEOUT, answered).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "control connection failed"),
                Err(_) => tracing::debug!(%peer, "control connection timed out"),
            }
        });
    }
}

/// Serves the one request of a connection with hyper, then closes it.
async fn answer_connection(
    stream: TcpStream,
    requests: mpsc::Sender<ControlRequest>,
    token: Option<Arc<str>>,
    fault_injection: bool,
    own_ip: Option<IpAddr>,
) -> std::io::Result<()> {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let requests = requests.clone();
        let token = token.clone();
        let answered: BoxFuture<'static, Result<Answer, Infallible>> = Box::pin(async move {
            Ok(answer(
                request,
                &requests,
                token.as_deref(),
                fault_injection,
                own_ip,
            )
            .await)
        });
        answered
    });
    let mut connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(PARSER_BUFFER_BYTES)
        .max_headers(2 * REQUEST_HEADERS_MAX)
        .serve_connection(TokioIo::new(HeadLimit::new(stream)), service);
    // Without shutdown, to keep the connection for answering a head that was too long.
    let served = std::future::poll_fn(|context| connection.poll_without_shutdown(context)).await;
    let limit = connection.into_parts().io.into_inner();
    let refusal = limit.refusal.clone();
    let mut stream = limit.into_stream();
    match (served, refusal) {
        (Ok(()), _) => stream.shutdown().await,
        (Err(_), Some(refusal)) => {
            tracing::debug!(%refusal, "control request refused");
            stream
                .write_all(refusal_answer(&refusal).as_bytes())
                .await?;
            stream.shutdown().await
        }
        (Err(error), None) => Err(std::io::Error::other(error)),
    }
}

/// The answer to a request that passed hyper's parser.
async fn answer(
    request: Request<Incoming>,
    requests: &mpsc::Sender<ControlRequest>,
    token: Option<&str>,
    fault_injection: bool,
    own_ip: Option<IpAddr>,
) -> Answer {
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let head =
        match request_head(&request).and_then(|head| admit(&head, token, own_ip).map(|()| head)) {
            Ok(head) => head,
            Err(refusal) => {
                // Debug, not warn: refusals cost the sender nothing, and a log line each would
                // let anyone on the host flood the log.
                tracing::debug!(%refusal, "control request refused");
                return respond(refusal.status(), "text/plain", refusal.to_string());
            }
        };
    let stopping = || {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "node stopping\n".to_string(),
        )
    };
    match (head.method, head.path) {
        ("GET", "/status") => {
            let (sender, receiver) = oneshot::channel();
            let report = ask(requests, ControlRequest::Status(sender), receiver).await;
            match report.and_then(|report| serde_json::to_string(&report).ok()) {
                Some(json) => respond(StatusCode::OK, "application/json", json),
                None => stopping(),
            }
        }
        ("GET", "/metrics") => {
            let (sender, receiver) = oneshot::channel();
            match ask(requests, ControlRequest::Metrics(sender), receiver).await {
                Some(text) => respond(StatusCode::OK, METRICS_CONTENT_TYPE, text),
                None => stopping(),
            }
        }
        ("POST", "/drain") => {
            let (sender, receiver) = oneshot::channel();
            let report = ask(requests, ControlRequest::Drain(sender), receiver).await;
            match report.and_then(|report| serde_json::to_string(&report).ok()) {
                Some(json) => respond(StatusCode::OK, "application/json", json),
                None => stopping(),
            }
        }
        (_, "/faults") if !fault_injection => respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!("{}\n", FaultPlanError::FaultInjectionOff),
        ),
        ("GET", "/faults") => {
            let (sender, receiver) = oneshot::channel();
            let report = ask(requests, ControlRequest::Faults(sender), receiver).await;
            match report.and_then(|report| serde_json::to_string(&report).ok()) {
                Some(json) => respond(StatusCode::OK, "application/json", json),
                None => stopping(),
            }
        }
        ("POST", "/faults") => {
            let plan = match read_fault_plan(body).await {
                Ok(plan) => plan,
                Err((status, reason)) => {
                    tracing::debug!(%reason, "fault plan refused");
                    return respond(status, "text/plain", reason);
                }
            };
            let (sender, receiver) = oneshot::channel();
            match ask(requests, ControlRequest::SetFaults(plan, sender), receiver).await {
                Some(Ok(report)) => match serde_json::to_string(&report) {
                    Ok(json) => respond(StatusCode::OK, "application/json", json),
                    Err(_) => stopping(),
                },
                Some(Err(error @ FaultPlanError::FaultInjectionOff)) => {
                    respond(StatusCode::FORBIDDEN, "text/plain", format!("{error}\n"))
                }
                Some(Err(error)) => respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("fault plan refused: {error}\n"),
                ),
                None => stopping(),
            }
        }
        (_, "/status" | "/metrics" | "/drain" | "/faults") => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_string(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found (try GET /status, GET /metrics, POST /drain, GET or POST /faults)\n"
                .to_string(),
        ),
    }
}

/// Reads and parses the body of `POST /faults`: at most [`FAULT_PLAN_BODY_MAX_BYTES`]
/// (413 past it), JSON of a [`FaultPlan`] (400 with serde's reason otherwise). The
/// connection's timeout bounds a slow body.
async fn read_fault_plan(body: Incoming) -> Result<FaultPlan, (StatusCode, String)> {
    let bytes = match Limited::new(body, FAULT_PLAN_BODY_MAX_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("fault plan refused: the body exceeds {FAULT_PLAN_BODY_MAX_BYTES} bytes\n"),
            ))
        }
        Err(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "fault plan refused: the body could not be read\n".to_string(),
            ))
        }
    };
    // serde_json's message names the line, column and the field or value it refused;
    // it quotes at most an unknown field's or variant's name, cut short by serde.
    serde_json::from_slice(&bytes).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("fault plan refused: not a fault plan (JSON): {error}\n"),
        )
    })
}

async fn ask<T>(
    requests: &mpsc::Sender<ControlRequest>,
    request: ControlRequest,
    receiver: oneshot::Receiver<T>,
) -> Option<T> {
    requests.send(request).await.ok()?;
    receiver.await.ok()
}

/// The parts of a request head the endpoint decides on.
#[derive(Debug, Default, PartialEq)]
struct RequestHead<'a> {
    method: &'a str,
    /// The request target in origin form (empty for any other form: no route).
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
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(super) enum Refusal {
    /// The head is longer than [`REQUEST_HEAD_MAX_BYTES`].
    #[error("request head exceeds {REQUEST_HEAD_MAX_BYTES} bytes\n")]
    HeadTooLarge,
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
    fn status(&self) -> StatusCode {
        match self {
            Refusal::HeadTooLarge | Refusal::Malformed(_) | Refusal::MissingHost => {
                StatusCode::BAD_REQUEST
            }
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
            Refusal::CrossOrigin | Refusal::FetchSite | Refusal::NoToken => StatusCode::FORBIDDEN,
            Refusal::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
        }
    }
}

/// The parts of a parsed request that decide admission. A header that decides must not be
/// repeated (two `Host`s could be read differently by two parsers) and must be text.
fn request_head<Body>(request: &Request<Body>) -> Result<RequestHead<'_>, Refusal> {
    let headers = request.headers();
    let uri = request.uri();
    let path = match (uri.authority(), uri.path_and_query()) {
        (None, Some(target)) => target.as_str(),
        _ => "",
    };
    Ok(RequestHead {
        method: request.method().as_str(),
        path,
        host: single_header(headers, &header::HOST)?,
        origin: headers.contains_key(header::ORIGIN),
        fetch_site: single_header(headers, "sec-fetch-site")?,
        authorization: single_header(headers, &header::AUTHORIZATION)?,
    })
}

/// The one value of header `name`, if present.
fn single_header(
    headers: &HeaderMap<HeaderValue>,
    name: impl header::AsHeaderName + Copy,
) -> Result<Option<&str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::Malformed(
            "a repeated Host, Sec-Fetch-Site or Authorization header",
        ));
    }
    value.to_str().map(Some).map_err(|_| {
        Refusal::Malformed(
            "a Host, Sec-Fetch-Site or Authorization header that is not visible ASCII",
        )
    })
}

/// Decides whether a parsed request may reach the event loop (see the module doc).
fn admit(
    head: &RequestHead<'_>,
    token: Option<&str>,
    own_ip: Option<IpAddr>,
) -> Result<(), Refusal> {
    let host = head.host.ok_or(Refusal::MissingHost)?;
    if !is_loopback_host(host) && !own_ip.is_some_and(|ip| is_ip_host(host, ip)) {
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

/// True if a `Host` value is the IP literal `ip` (IPv6 in brackets), with or without a
/// port: the endpoint's own non-loopback address, which, being a literal, cannot be
/// rebound either.
fn is_ip_host(host: &str, ip: IpAddr) -> bool {
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok
            && inside
                .parse::<Ipv6Addr>()
                .is_ok_and(|parsed| IpAddr::V6(parsed) == ip);
    }
    let name = match host.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.parse::<Ipv4Addr>()
        .is_ok_and(|parsed| IpAddr::V4(parsed) == ip)
}

/// True for a decimal port number (digits only: `u16::from_str` would also take `+80`).
fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

/// An answer with `body`; every answer closes its connection.
fn respond(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if status == StatusCode::UNAUTHORIZED {
        // A 401 names the scheme it wants (RFC 9110 section 11.6.1).
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"dtx control\""),
        );
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// The answer to a head [`HeadLimit`] refused, written on the connection directly: hyper
/// stopped at the failed read and answers nothing itself.
fn refusal_answer(refusal: &Refusal) -> String {
    let status = refusal.status();
    let body = refusal.to_string();
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::report::tests::report;
    use crate::control::token::tests::TOKEN;
    use crate::control::{fetch_status, request, start_drain};
    use tokio::io::AsyncReadExt;

    /// An endpoint guarded by `token`, and the receiving end of its event-loop channel
    /// (nothing answers it: a test sees exactly which requests got through).
    async fn endpoint(token: Option<&str>) -> (SocketAddr, mpsc::Receiver<ControlRequest>) {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, token.map(str::to_string), false));
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

    #[tokio::test]
    async fn fault_plans_need_the_flag_the_token_and_a_well_formed_bounded_body() {
        use crate::control::{get_faults, request_with_body, set_faults};
        use crate::faults::{FaultReport, FaultRule, PeerSelector};
        let plan = FaultPlan::healed().with_rule(FaultRule::partition(PeerSelector::node("n2")));
        // Without --fault-injection: 403 with the reason, for reads and writes alike.
        let (address, mut requests) = endpoint(Some(TOKEN)).await;
        for method in ["GET", "POST"] {
            let (status, body) = request(address, method, "/faults", Some(TOKEN))
                .await
                .expect("answer");
            assert_eq!(status, 403, "{method}: {body}");
            assert!(
                body.contains("not started with --fault-injection"),
                "{body}"
            );
        }
        assert!(matches!(
            set_faults(address, TOKEN, &plan).await,
            Err(ControlError::Refused { status: 403, .. })
        ));
        assert!(requests.try_recv().is_err());

        // With it: a fake event loop that takes any plan but refuses drop 0.75.
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, mut receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, Some(TOKEN.to_string()), true));
        let (seen_sender, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut in_force = FaultPlan::healed();
            while let Some(request) = receiver.recv().await {
                match request {
                    ControlRequest::SetFaults(plan, reply) => {
                        let _ = seen_sender.send(plan.clone());
                        if plan.rules.iter().any(|rule| rule.drop == 0.75) {
                            let _ = reply.send(Err(FaultPlanError::Probability {
                                rule: 0,
                                field: "drop",
                                value: 0.75,
                            }));
                            continue;
                        }
                        in_force = plan;
                        let _ = reply.send(Ok(FaultReport {
                            plan: in_force.clone(),
                            ..FaultReport::default()
                        }));
                    }
                    ControlRequest::Faults(reply) => {
                        let _ = reply.send(FaultReport {
                            plan: in_force.clone(),
                            ..FaultReport::default()
                        });
                    }
                    _ => {}
                }
            }
        });
        let post = |token: Option<&'static str>, body: Vec<u8>| async move {
            request_with_body(address, "POST", "/faults", token, Some(body))
                .await
                .expect("answer")
        };
        let json = serde_json::to_vec(&plan).expect("json");
        assert_eq!(post(None, json.clone()).await.0, 401);
        for (body, status, reason) in [
            (b"{not json".to_vec(), 400, "not a fault plan"),
            (
                br#"{"rules": [{"peer": "n2", "dorp": 1}]}"#.to_vec(),
                400,
                "unknown field",
            ),
            (
                br#"{"rules": [{"peer": "n2", "drop": "all"}]}"#.to_vec(),
                400,
                "invalid type",
            ),
            (vec![b' '; FAULT_PLAN_BODY_MAX_BYTES + 1], 413, "exceeds"),
        ] {
            let (answered, text) = post(Some(TOKEN), body).await;
            assert_eq!(answered, status, "{text}");
            assert!(text.contains(reason), "{text}");
        }
        assert!(
            seen.try_recv().is_err(),
            "a bad body reached the event loop"
        );
        let refused = FaultPlan::healed().with_rule(FaultRule::lossy(PeerSelector::Every, 0.75));
        match set_faults(address, TOKEN, &refused).await {
            Err(ControlError::Refused {
                status: 400,
                message,
                ..
            }) => assert!(message.contains("drop must be a probability"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.recv().await, Some(refused));
        let report = set_faults(address, TOKEN, &plan).await.expect("in force");
        assert_eq!(report.plan, plan);
        assert_eq!(seen.recv().await, Some(plan.clone()));
        assert_eq!(get_faults(address).await.expect("read").plan, plan);
        assert_eq!(
            request(address, "DELETE", "/faults", Some(TOKEN))
                .await
                .expect("405")
                .0,
            405
        );
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

    #[test]
    fn the_own_private_ip_is_admitted_only_as_that_literal() {
        let own: IpAddr = "10.213.7.2".parse().unwrap();
        for host in ["10.213.7.2", "10.213.7.2:40101"] {
            assert!(is_ip_host(host, own), "{host}");
        }
        for host in [
            "10.213.7.3",
            "10.213.7.2:",
            "10.213.7.2:x",
            "10.213.7.2.nip.io",
            "evil.example",
            "[10.213.7.2]",
            "",
        ] {
            assert!(!is_ip_host(host, own), "{host}");
        }
        let head = RequestHead {
            method: "GET",
            path: "/status",
            host: Some("10.213.7.2:1"),
            ..RequestHead::default()
        };
        assert_eq!(admit(&head, None, Some(own)), Ok(()));
        assert_eq!(admit(&head, None, None), Err(Refusal::ForeignHost));
    }

    #[tokio::test]
    async fn the_endpoint_answers_routes_and_rejects_bad_requests_without_stopping() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (sender, mut receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, Some(TOKEN.to_string()), false));
        tokio::spawn(async move {
            while let Some(request) = receiver.recv().await {
                match request {
                    ControlRequest::Metrics(reply) => {
                        let _ = reply.send("dtx_up 1\n".to_string());
                    }
                    ControlRequest::Status(reply) | ControlRequest::Drain(reply) => {
                        let _ = reply.send(report(false));
                    }
                    ControlRequest::Faults(_) | ControlRequest::SetFaults(..) => {
                        panic!("a node without --fault-injection asked the event loop about faults")
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
