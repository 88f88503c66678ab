//! The client side of the control endpoint, used by `dtx status`, `dtx drain` and the
//! lab's fault injection: one request on one hyper HTTP/1.1 connection.

use super::token::is_well_formed_token;
use super::{ControlError, StatusReport, CONNECTION_TIMEOUT};
use crate::faults::{FaultPlan, FaultReport};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Sends one request without a body to a control endpoint, with
/// `Authorization: Bearer <token>` if a token is given; returns the status code and the
/// body.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), ControlError> {
    request_with_body(address, method, path, token, None).await
}

/// Sends one request to a control endpoint, with `Authorization: Bearer <token>` if a
/// token is given and a JSON `body` if one is given; returns the status code and the
/// body.
pub async fn request_with_body(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(u16, String), ControlError> {
    if token.is_some_and(|token| !is_well_formed_token(token)) {
        return Err(ControlError::TokenCharacters);
    }
    let bad = |message: String| ControlError::BadAnswer { address, message };
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|error| bad(error.to_string()))?)
        .uri(path)
        .header(header::HOST, address.to_string())
        .header(header::CONNECTION, "close");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|error| bad(error.to_string()))?;
    let unreachable = |cause| ControlError::Unreachable { address, cause };
    let exchange = async {
        let stream = TcpStream::connect(address).await.map_err(unreachable)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(std::io::Error::other(error)))?;
        // The connection ends when the node closes it after its answer.
        let driven = tokio::spawn(connection);
        let answer = sender
            .send_request(request)
            .await
            .map_err(|error| bad(error.to_string()))?;
        let status = answer.status().as_u16();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|error| bad(error.to_string()))?
            .to_bytes();
        driven.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(CONNECTION_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
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

/// `POST /faults` to the node at `address` (started with `--fault-injection`),
/// authorized by its control `token`: puts `plan` in force; returns the plan now in force
/// and the counters. A refused plan is [`ControlError::Refused`] with the node's reason.
pub async fn set_faults(
    address: SocketAddr,
    token: &str,
    plan: &FaultPlan,
) -> Result<FaultReport, ControlError> {
    let body = serde_json::to_vec(plan).map_err(|error| ControlError::BadAnswer {
        address,
        message: format!("cannot encode the fault plan: {error}"),
    })?;
    let answer = request_with_body(address, "POST", "/faults", Some(token), Some(body)).await?;
    parse_json(address, answer)
}

/// `GET /faults` of the node at `address`: the plan in force and the fault counters.
pub async fn get_faults(address: SocketAddr) -> Result<FaultReport, ControlError> {
    parse_json(address, request(address, "GET", "/faults", None).await?)
}

/// The JSON answer of a request, or [`ControlError::Refused`] for a status other than 200.
fn parse_json<T: serde::de::DeserializeOwned>(
    address: SocketAddr,
    (status, body): (u16, String),
) -> Result<T, ControlError> {
    if status != 200 {
        return Err(ControlError::Refused {
            address,
            status,
            message: body.trim().to_string(),
        });
    }
    serde_json::from_str(&body).map_err(|error| ControlError::BadAnswer {
        address,
        message: error.to_string(),
    })
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
