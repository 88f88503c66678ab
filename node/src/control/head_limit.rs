//! The bound on a control request's head, enforced on the bytes before hyper parses them:
//! a head longer than [`REQUEST_HEAD_MAX_BYTES`] or with more than [`REQUEST_HEADERS_MAX`]
//! header lines is refused with 400, as the endpoint always answered. (hyper's own bounds
//! answer 431, and its smallest buffer is exactly our bound, so they are set above ours and
//! never trip first.)

use super::server::{Refusal, REQUEST_HEADERS_MAX, REQUEST_HEAD_MAX_BYTES};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection whose reads fail once the request head outgrows the bound; the refusal
/// stays readable so that the server can answer it on the same connection.
#[derive(Debug)]
pub(super) struct HeadLimit {
    stream: TcpStream,
    progress: HeadProgress,
    /// Why the head was refused, once it was.
    pub(super) refusal: Option<Refusal>,
}

/// How far the head has been read.
#[derive(Debug, Default)]
struct HeadProgress {
    /// Bytes of the head read so far.
    head_bytes: usize,
    /// Lines of the head ended so far (the request line and headers).
    lines: usize,
    /// Bytes of the current line so far (carriage returns not counted).
    line_bytes: usize,
    /// The empty line ending the head was read: the rest passes unobserved.
    ended: bool,
}

impl HeadLimit {
    /// Observes the head of the one request `stream` carries.
    pub(super) fn new(stream: TcpStream) -> Self {
        HeadLimit {
            stream,
            progress: HeadProgress::default(),
            refusal: None,
        }
    }

    /// The connection, to answer a refusal on.
    pub(super) fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl HeadProgress {
    /// Follows one byte of the head; the refusal if the head is now over its bound.
    fn observe(&mut self, byte: u8) -> Option<Refusal> {
        self.head_bytes += 1;
        match byte {
            b'\n' if self.line_bytes == 0 => {
                // Empty lines before the request line are skipped (RFC 9112 section 2.2).
                self.ended = self.lines > 0;
            }
            b'\n' => {
                self.lines += 1;
                self.line_bytes = 0;
            }
            b'\r' => {}
            _ => self.line_bytes += 1,
        }
        if self.ended {
            None
        } else if self.head_bytes > REQUEST_HEAD_MAX_BYTES {
            Some(Refusal::HeadTooLarge)
        } else if self.lines > REQUEST_HEADERS_MAX + 1 {
            Some(Refusal::Malformed("too many header lines"))
        } else {
            None
        }
    }
}

impl AsyncRead for HeadLimit {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.progress.ended {
            return Pin::new(&mut this.stream).poll_read(context, buffer);
        }
        let before = buffer.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(context, buffer))?;
        for index in before..buffer.filled().len() {
            if this.progress.ended {
                break;
            }
            if let Some(refusal) = this.progress.observe(buffer.filled()[index]) {
                this.refusal = Some(refusal);
                // An error, not end of file: hyper answers nothing to a failed read, and
                // the server answers the refusal itself.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head over its bound",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadLimit {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal observing `head` ends with, and whether its end was seen.
    fn observed(head: &[u8]) -> (Option<Refusal>, bool) {
        let mut progress = HeadProgress::default();
        let refusal = head.iter().find_map(|byte| progress.observe(*byte));
        (refusal, progress.ended)
    }

    #[test]
    fn a_head_is_bounded_in_bytes_and_lines_until_its_empty_line() {
        assert_eq!(observed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), (None, true));
        assert_eq!(observed(b"\r\nGET / HTTP/1.1\n\nbody"), (None, true));
        let long = vec![b'x'; REQUEST_HEAD_MAX_BYTES + 1];
        assert_eq!(observed(&long), (Some(Refusal::HeadTooLarge), false));
        let mut exact = b"GET / HTTP/1.1\r\n".to_vec();
        exact.resize(REQUEST_HEAD_MAX_BYTES - 4, b'x');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(observed(&exact), (None, true));
        let many = format!(
            "GET / HTTP/1.1\r\n{}",
            "A: b\r\n".repeat(REQUEST_HEADERS_MAX + 1)
        );
        assert_eq!(
            observed(many.as_bytes()),
            (Some(Refusal::Malformed("too many header lines")), false)
        );
        let enough = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(REQUEST_HEADERS_MAX)
        );
        assert_eq!(observed(enough.as_bytes()), (None, true));
    }
}
