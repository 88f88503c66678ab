//! The HTTP participant against a tiny scripted hyper server on 127.0.0.1.

use super::*;
use dtx_protocol::NodeId;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Response;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// What the scripted server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.as_bytes().to_vec(),
        delay: Duration::ZERO,
    }
}

/// One request the server saw: method, path, body.
type Seen = (String, String, String);

type Handler = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

/// A server answering with `handler(index of the request, request)`; it records every
/// request.
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(handler: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                let handler = handler.clone();
                let recorded = recorded.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    let recorded = recorded.clone();
                    async move {
                        let method = request.method().to_string();
                        let path = request.uri().path().to_string();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes();
                        let request = (method, path, String::from_utf8_lossy(&body).into_owned());
                        let index = {
                            let mut seen = recorded.lock().expect("lock");
                            seen.push(request.clone());
                            seen.len() - 1
                        };
                        let answer = handler(index, &request);
                        tokio::time::sleep(answer.delay).await;
                        let response = Response::builder()
                            .status(answer.status)
                            .body(Full::new(Bytes::from(answer.body)))
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn fast_options() -> HttpOptions {
    HttpOptions {
        call_timeout: Duration::from_millis(300),
        retry_delay_first: Duration::from_millis(10),
        ..HttpOptions::default()
    }
}

fn txn(sequence: u64) -> TxnId {
    TxnId {
        client: NodeId(7),
        sequence,
    }
}

fn reserve() -> Operation {
    Operation::Call {
        target: Key::new("flights/LH400"),
        action: "reserve".to_string(),
        args: Value::new(r#"{"item":"LH400"}"#),
    }
}

/// A port nothing listens on (bound, then released).
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

#[test]
fn service_urls_are_validated_with_a_typed_error() {
    let url: ServiceUrl = "http://127.0.0.1:8080".parse().expect("plain");
    assert_eq!(url.to_string(), "http://127.0.0.1:8080");
    assert_eq!(url.path("/dtx/prepare"), "/dtx/prepare");
    let prefixed: ServiceUrl = "http://localhost:9/api/".parse().expect("prefix");
    assert_eq!(prefixed.path("/dtx/prepared"), "/api/dtx/prepared");
    let v6: ServiceUrl = "http://[::1]:8080".parse().expect("ipv6");
    assert_eq!(v6.authority(), "[::1]:8080");
    let error = |text: &str| text.parse::<ServiceUrl>().expect_err(text);
    assert!(matches!(
        error("https://127.0.0.1:8080"),
        ServiceUrlError::NotHttp { .. }
    ));
    assert!(matches!(
        error("127.0.0.1:8080"),
        ServiceUrlError::NotHttp { .. }
    ));
    assert!(matches!(
        error("http://127.0.0.1"),
        ServiceUrlError::NoPort { .. }
    ));
    assert!(matches!(
        error("http://127.0.0.1:0"),
        ServiceUrlError::NoPort { .. }
    ));
    assert!(matches!(
        error("http://u:p@127.0.0.1:1"),
        ServiceUrlError::UserInfo { .. }
    ));
    assert!(matches!(
        error("http://127.0.0.1:1/?a=b"),
        ServiceUrlError::Query { .. }
    ));
    assert!(matches!(
        error("http://exa mple:1"),
        ServiceUrlError::Unparsable { .. }
    ));
    assert!(HttpParticipant::new("ftp://127.0.0.1:21", HttpOptions::default()).is_err());
}

#[test]
fn operations_take_the_contract_json_shapes() {
    let shapes = [
        (
            reserve(),
            json!({"kind": "call", "target": "flights/LH400", "action": "reserve", "args": {"item": "LH400"}}),
        ),
        (
            Operation::Call {
                target: Key::new("q/x"),
                action: "send".to_string(),
                args: Value::new("not json"),
            },
            json!({"kind": "call", "target": "q/x", "action": "send", "args": "not json"}),
        ),
        (
            Operation::Write {
                key: Key::new("k"),
                value: Value::new("v"),
            },
            json!({"kind": "write", "key": "k", "value": "v"}),
        ),
        (
            Operation::Update {
                key: Key::new("k"),
                value: Value::new(vec![0xff, 0]),
            },
            json!({"kind": "update", "key": "k", "value_base64": "/wA="}),
        ),
        (
            Operation::Delete { key: Key::new("k") },
            json!({"kind": "delete", "key": "k"}),
        ),
        (
            Operation::Read {
                key: Key::new("k"),
                expected: Some(Version(3)),
            },
            json!({"kind": "read", "key": "k", "expected_version": 3}),
        ),
        (
            Operation::Read {
                key: Key::new("k"),
                expected: None,
            },
            json!({"kind": "read", "key": "k", "expected_version": null}),
        ),
        (
            Operation::ReadForUpdate { key: Key::new("k") },
            json!({"kind": "read_for_update", "key": "k"}),
        ),
    ];
    for (operation, shape) in shapes {
        let json = operation_to_json(&operation);
        assert_eq!(json, shape);
        let back = operation_from_json(&json).expect("parses back");
        // A call's non-JSON args come back as a JSON string: the same JSON again.
        assert_eq!(operation_to_json(&back), shape);
    }
    assert_eq!(
        operation_from_json(&operation_to_json(&reserve())).expect("call"),
        reserve()
    );
    for bad in [
        json!({"kind": "call", "target": "a/b", "action": "x"}),
        json!({"kind": "fly"}),
        json!({"kind": "write", "key": "k"}),
        json!({"kind": "write", "key": "k", "value": "v", "value_base64": "dg=="}),
        json!({"kind": "read", "key": "k", "expected_version": "3"}),
        json!(["call"]),
    ] {
        assert!(operation_from_json(&bad).is_err(), "{bad}");
    }
    let body = prepare_request_body(txn(2), &[reserve()]);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["txn"], "t7.2");
    assert_eq!(body["operations"][0]["action"], "reserve");
    assert_eq!(finish_request_body(txn(2)), br#"{"txn":"t7.2"}"#.to_vec());
}

#[tokio::test]
async fn prepare_posts_the_operations_and_a_2xx_is_prepared() {
    let server = Server::start(|_, _| reply(200, r#"{"vote":"prepared"}"#)).await;
    let participant = HttpParticipant::new(&server.url, fast_options()).expect("url");
    let answer = participant
        .prepare(txn(1), &[reserve()])
        .await
        .expect("answer");
    assert_eq!(answer, PrepareAnswer::Prepared);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].0.as_str(), seen[0].1.as_str()),
        ("POST", "/dtx/prepare")
    );
    let body: serde_json::Value = serde_json::from_str(&seen[0].2).expect("json");
    assert_eq!(
        body,
        json!({"txn": "t7.1", "operations": [operation_to_json(&reserve())]})
    );
}

#[tokio::test]
async fn a_4xx_is_a_refusal_with_the_body_reason_or_the_status_line() {
    let server = Server::start(|index, _| match index {
        0 => reply(
            409,
            r#"{"vote":"aborted","reason":"no seats left on LH400"}"#,
        ),
        1 => reply(404, "nothing here"),
        _ => reply(422, &json!({"reason": "x".repeat(5000)}).to_string()),
    })
    .await;
    let participant = HttpParticipant::new(&server.url, fast_options()).expect("url");
    let refused = |reason: &str| PrepareAnswer::Refused {
        reason: reason.to_string(),
    };
    let answer = participant.prepare(txn(1), &[]).await.expect("first");
    assert_eq!(answer, refused("no seats left on LH400"));
    let answer = participant.prepare(txn(2), &[]).await.expect("second");
    assert_eq!(answer, refused("404 Not Found"));
    let answer = participant.prepare(txn(3), &[]).await.expect("third");
    assert_eq!(answer, refused(&"x".repeat(REFUSAL_TEXT_MAX_BYTES)));
    assert_eq!(server.seen().len(), 3, "a refusal is not retried");
}

#[tokio::test]
async fn prepare_retries_5xx_with_backoff_then_gives_up() {
    let server = Server::start(|index, _| match index {
        0..=2 => reply(503, "busy"),
        _ => reply(200, r#"{"vote":"prepared"}"#),
    })
    .await;
    let participant = HttpParticipant::new(&server.url, fast_options()).expect("url");
    let answer = participant
        .prepare(txn(1), &[])
        .await
        .expect("fourth attempt");
    assert_eq!(answer, PrepareAnswer::Prepared);
    assert_eq!(server.seen().len(), 4);

    let failing = Server::start(|_, _| reply(500, "broken")).await;
    let participant = HttpParticipant::new(&failing.url, fast_options()).expect("url");
    let started = std::time::Instant::now();
    let error = participant
        .prepare(txn(1), &[])
        .await
        .expect_err("gives up");
    assert!(error.detail.contains("500"), "{error}");
    assert_eq!(failing.seen().len(), PREPARE_ATTEMPTS_DEFAULT as usize);
    // 10 + 20 + 40 ms of backoff between the four attempts.
    assert!(started.elapsed() >= Duration::from_millis(70));
}

#[tokio::test]
async fn a_slow_service_times_out_and_prepare_is_retried() {
    let server = Server::start(|_, _| Reply {
        delay: Duration::from_secs(2),
        ..reply(200, r#"{"vote":"prepared"}"#)
    })
    .await;
    let options = HttpOptions {
        call_timeout: Duration::from_millis(100),
        prepare_attempts_max: 2,
        ..fast_options()
    };
    let participant = HttpParticipant::new(&server.url, options).expect("url");
    let error = participant
        .prepare_with_retries(txn(1), &[])
        .await
        .expect_err("slow");
    assert_eq!(error.problem, CallProblem::TimedOut { timeout_ms: 100 });
    assert_eq!(server.seen().len(), 2);
    let error = participant
        .finish_once(txn(1), Outcome::Commit)
        .await
        .expect_err("slow");
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_closed_port_is_a_connection_error() {
    let url = closed_port_url().await;
    let participant = HttpParticipant::new(&url, fast_options()).expect("url");
    let error = participant
        .prepare_with_retries(txn(1), &[])
        .await
        .expect_err("closed");
    assert!(
        matches!(error.problem, CallProblem::Connect { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("/dtx/prepare"), "{error}");
    let error = participant.list_prepared().await.expect_err("closed");
    assert!(
        matches!(error.problem, CallProblem::Connect { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn finish_posts_commit_or_rollback_once() {
    let server = Server::start(|index, _| match index {
        0 | 1 => reply(200, ""),
        2 => reply(500, "down"),
        _ => reply(409, "no"),
    })
    .await;
    let participant = HttpParticipant::new(&server.url, fast_options()).expect("url");
    participant
        .finish(txn(1), Outcome::Commit)
        .await
        .expect("commit");
    participant
        .finish(txn(2), Outcome::Abort)
        .await
        .expect("rollback");
    let error = participant
        .finish(txn(3), Outcome::Commit)
        .await
        .expect_err("500");
    assert!(error.detail.contains("500"), "{error}");
    let error = participant
        .finish_once(txn(4), Outcome::Abort)
        .await
        .expect_err("409");
    assert!(!error.is_transient());
    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/dtx/commit",
            "/dtx/rollback",
            "/dtx/commit",
            "/dtx/rollback"
        ]
    );
    assert_eq!(seen[1].2, r#"{"txn":"t7.2"}"#);
}

#[tokio::test]
async fn the_prepared_list_is_parsed_and_bounded() {
    let server = Server::start(|index, _| match index {
        0 => reply(
            200,
            r#"{"other": {"x": [1]}, "prepared": ["t1.2", "t1.2"]}"#,
        ),
        1 => reply(200, r#"{"prepared": ["t1.2", "t1.3", "t1.4"]}"#),
        2 => reply(200, r#"{"prepared": ["t1.x"]}"#),
        3 => reply(200, r#"{"held": []}"#),
        4 => reply(
            200,
            &format!(r#"{{"prepared": [], "pad": "{}"}}"#, "x".repeat(4000)),
        ),
        _ => reply(503, ""),
    })
    .await;
    let options = HttpOptions {
        prepared_ids_max: 2,
        response_body_max_bytes: 1000,
        ..fast_options()
    };
    let participant = HttpParticipant::new(&server.url, options).expect("url");
    let listed = participant.prepared().await.expect("list");
    assert_eq!(listed, vec![txn_of(1, 2), txn_of(1, 2)]);
    let too_many = participant.list_prepared().await.expect_err("three ids");
    assert!(too_many.to_string().contains("more than 2"), "{too_many}");
    let bad_id = participant.list_prepared().await.expect_err("bad id");
    assert!(
        matches!(bad_id.problem, CallProblem::BadAnswer { .. }),
        "{bad_id}"
    );
    let missing = participant.list_prepared().await.expect_err("no field");
    assert!(missing.to_string().contains("prepared"), "{missing}");
    // 2 ids × 50 bytes + 1000 bytes.
    let large = participant.list_prepared().await.expect_err("large");
    assert_eq!(
        large.problem,
        CallProblem::BodyTooLarge { limit_bytes: 1100 }
    );
    let down = participant.list_prepared().await.expect_err("503");
    assert!(down.is_transient());
}

fn txn_of(client: u64, sequence: u64) -> TxnId {
    TxnId {
        client: NodeId(client),
        sequence,
    }
}

#[tokio::test]
async fn oversized_and_contradicting_answers_to_prepare_are_errors() {
    let server = Server::start(|index, _| match index {
        0 => reply(200, &"x".repeat(2000)),
        1 => reply(200, r#"{"vote":"aborted","reason":"changed my mind"}"#),
        2 => reply(302, ""),
        _ => reply(204, ""),
    })
    .await;
    let options = HttpOptions {
        response_body_max_bytes: 1000,
        prepare_attempts_max: 1,
        ..fast_options()
    };
    let participant = HttpParticipant::new(&server.url, options).expect("url");
    let large = participant
        .prepare_with_retries(txn(1), &[])
        .await
        .expect_err("large");
    assert_eq!(
        large.problem,
        CallProblem::BodyTooLarge { limit_bytes: 1000 }
    );
    let contradiction = participant
        .prepare_with_retries(txn(2), &[])
        .await
        .expect_err("vote");
    assert!(matches!(
        contradiction.problem,
        CallProblem::BadAnswer { .. }
    ));
    let redirect = participant
        .prepare_with_retries(txn(3), &[])
        .await
        .expect_err("302");
    assert!(matches!(
        redirect.problem,
        CallProblem::UnexpectedStatus { status: 302, .. }
    ));
    // A 2xx without a body is still the contract's "prepared".
    let empty = participant
        .prepare_with_retries(txn(4), &[])
        .await
        .expect("204");
    assert_eq!(empty, PrepareAnswer::Prepared);
}
