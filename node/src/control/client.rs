//! The client side of the control endpoint, used by `dtx status` and `dtx drain`.

use super::token::is_well_formed_token;
use super::{ControlError, StatusReport, CONNECTION_TIMEOUT};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
