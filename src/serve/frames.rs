//! Frontend messages checked for their framing before pgwire decodes them.
//!
//! pgwire 0.41's decoders read without bounds checks, from the connection's whole read buffer: a
//! declared length under 4 underflows, a message shorter than its fields (a truncated Parse) reads
//! past its end, and both panic in pgwire's codec (found by `tests/it/fuzz.rs`). [`Checked`] sits
//! between the socket and pgwire, gathers each message whole, and hands it on only if its fields
//! fill exactly its declared length, as every real client sends them; anything else ends the
//! connection with SQLSTATE 08P01 (protocol violation) instead of a panic. [`serve`] is pgwire's
//! `process_socket` with this check in it.
//!
//! Message layouts: PostgreSQL's "Message Formats" (protocol 3.0),
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use datafusion_postgres::pgwire;
use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::ErrorInfo;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

/// The longest message accepted: well above any statement or parameter a BI tool sends.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// PostgreSQL caps the start-up packet at 10,000 bytes (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;
/// As pgwire: a client that has not signed in within a minute is dropped.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Why a message was refused.
#[derive(Debug, PartialEq)]
pub struct Malformed(pub String);

fn malformed(what: impl Into<String>) -> Malformed {
    Malformed(what.into())
}

/// Where the stream of messages is: start-up messages carry no type byte.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    StartUp,
    Typed,
}

/// The length of the first whole message of `buf`, once it is all there, checked.
fn next_message(buf: &[u8], phase: Phase) -> Result<Option<(usize, Phase)>, Malformed> {
    let header = match phase {
        Phase::StartUp => 0,
        Phase::Typed => 1,
    };
    if buf.len() < header + 4 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes(buf[header..header + 4].try_into().expect("4 bytes"));
    let limit = match phase {
        Phase::StartUp => MAX_STARTUP,
        Phase::Typed => MAX_MESSAGE,
    };
    let Ok(declared) = usize::try_from(declared) else {
        return Err(malformed(format!("a negative message length ({declared})")));
    };
    if declared < 4 || declared > limit {
        return Err(malformed(format!(
            "a message length of {declared} bytes (4 to {limit})"
        )));
    }
    let total = header + declared;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[header + 4..total];
    let next = match phase {
        Phase::StartUp => check_startup(body)?,
        Phase::Typed => {
            check_typed(buf[0], body)?;
            Phase::Typed
        }
    };
    Ok(Some((total, next)))
}

/// A start-up phase message: SSL or GSS encryption request, cancel request, or StartupMessage.
fn check_startup(body: &[u8]) -> Result<Phase, Malformed> {
    let mut fields = Fields(body);
    let code = fields
        .i32()
        .ok_or_else(|| malformed("a start-up packet under 8 bytes"))?;
    match code {
        SSL_REQUEST | GSSENC_REQUEST => {
            fields.end("an encryption request")?;
            Ok(Phase::StartUp)
        }
        CANCEL_REQUEST => {
            // The process id, then a secret key of 4 bytes (protocol 3.0) up to 256 (3.2).
            fields.skip(4, "CancelRequest")?;
            if !(4..=256).contains(&fields.0.len()) {
                return Err(malformed("a CancelRequest key of the wrong length"));
            }
            Ok(Phase::StartUp)
        }
        _ => {
            // Name and value pairs, ended by an empty name.
            loop {
                let name = fields.cstring("StartupMessage")?;
                if name.is_empty() {
                    break;
                }
                fields.cstring("StartupMessage")?;
            }
            fields.end("StartupMessage")?;
            Ok(Phase::Typed)
        }
    }
}

/// A typed message's body against its layout. Types pgwire does not know pass: it refuses them.
fn check_typed(kind: u8, body: &[u8]) -> Result<(), Malformed> {
    let mut fields = Fields(body);
    let name = match kind {
        b'Q' => {
            fields.cstring("Query")?;
            "Query"
        }
        b'P' => {
            fields.cstring("Parse")?;
            fields.cstring("Parse")?;
            let types = fields.u16("Parse")?;
            fields.skip(types as usize * 4, "Parse")?;
            "Parse"
        }
        b'B' => {
            fields.cstring("Bind")?;
            fields.cstring("Bind")?;
            let formats = fields.u16("Bind")?;
            fields.skip(formats as usize * 2, "Bind")?;
            for _ in 0..fields.u16("Bind")? {
                let len = fields.i32().ok_or_else(|| malformed("a truncated Bind"))?;
                match usize::try_from(len) {
                    Ok(len) => fields.skip(len, "Bind")?,
                    Err(_) if len == -1 => {}
                    Err(_) => return Err(malformed(format!("a Bind parameter of length {len}"))),
                }
            }
            let results = fields.u16("Bind")?;
            fields.skip(results as usize * 2, "Bind")?;
            "Bind"
        }
        b'D' | b'C' => {
            fields.skip(1, "Describe or Close")?;
            fields.cstring("Describe or Close")?;
            "Describe or Close"
        }
        b'E' => {
            fields.cstring("Execute")?;
            fields.skip(4, "Execute")?;
            "Execute"
        }
        b'f' => {
            fields.cstring("CopyFail")?;
            "CopyFail"
        }
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'c' => "CopyDone",
        _ => return Ok(()),
    };
    fields.end(name)
}

/// A cursor over a message body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn skip(&mut self, n: usize, what: &str) -> Result<(), Malformed> {
        if self.0.len() < n {
            return Err(malformed(format!("a truncated {what}")));
        }
        self.0 = &self.0[n..];
        Ok(())
    }

    fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*head))
    }

    fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        let (head, rest) = self
            .0
            .split_first_chunk::<2>()
            .ok_or_else(|| malformed(format!("a truncated {what}")))?;
        self.0 = rest;
        Ok(u16::from_be_bytes(*head))
    }

    fn cstring(&mut self, what: &str) -> Result<&[u8], Malformed> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("a string without its end in {what}")))?;
        let text = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(text)
    }

    fn end(&self, what: &str) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} bytes after the end of {what}",
                self.0.len()
            )))
        }
    }
}

/// The socket as pgwire reads it: only whole, well-formed messages come through; a malformed one
/// is an `InvalidData` error.
pub struct Checked<T> {
    io: T,
    /// Read from `io`, not yet checked: the message being gathered.
    gathering: BytesMut,
    /// Checked, to hand on.
    checked: BytesMut,
    phase: Phase,
}

impl<T> Checked<T> {
    /// `io`, with `already_read` (bytes read from it before) checked first.
    pub fn new(io: T, already_read: BytesMut) -> Self {
        Checked {
            io,
            gathering: already_read,
            checked: BytesMut::new(),
            phase: Phase::StartUp,
        }
    }

    /// Moves every whole message of `gathering` to `checked`.
    fn check_gathered(&mut self) -> io::Result<()> {
        while let Some((len, next)) = next_message(&self.gathering, self.phase)
            .map_err(|Malformed(what)| io::Error::new(io::ErrorKind::InvalidData, what))?
        {
            self.checked
                .extend_from_slice(&self.gathering.split_to(len));
            self.phase = next;
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Checked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.check_gathered()?;
            if !this.checked.is_empty() {
                let n = this.checked.len().min(out.remaining());
                out.put_slice(&this.checked[..n]);
                this.checked.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client closed; a message it left half sent goes with it.
                return Poll::Ready(Ok(()));
            }
            this.gathering.extend_from_slice(read.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Checked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// pgwire's `process_socket`, its messages read through [`Checked`]: TLS negotiation, then each
/// message to the handlers until the client leaves, the start-up times out, or a message is
/// malformed (answered with 08P01, then the connection closes).
pub async fn serve<H: PgWireServerHandlers>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: H,
) -> io::Result<()> {
    let startup_timeout = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_timeout);
    let negotiated = tokio::select! {
        () = &mut startup_timeout => return Ok(()),
        negotiated = negotiate_tls(socket, tls) => negotiated?,
    };
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    let parts = negotiated.into_parts();
    let mut checked = FramedParts::new(Checked::new(parts.io, parts.read_buf), parts.codec);
    checked.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(checked);
    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
    loop {
        let signing_in = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if signing_in {
            tokio::select! {
                () = &mut startup_timeout => None,
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let message = match message {
            Some(Ok(PgWireFrontendMessage::Terminate(_))) | None => break,
            Some(Ok(message)) => message,
            Some(Err(pgwire::error::PgWireError::IoError(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                tracing::debug!(error = %e, "malformed frontend message; closing the connection");
                let refusal = ErrorInfo::new(
                    "FATAL".into(),
                    "08P01".into(),
                    format!("malformed message: {e}"),
                );
                let _ = socket
                    .send(PgWireBackendMessage::ErrorResponse(refusal.into()))
                    .await;
                break;
            }
            Some(Err(_)) => break,
        };
        let extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        if let Err(e) = process_message(
            message,
            &mut socket,
            startup_handler.clone(),
            simple_query_handler.clone(),
            extended_query_handler.clone(),
            copy_handler.clone(),
            cancel_handler.clone(),
        )
        .await
        {
            let mut e = e;
            error_handler.on_error(&socket, &mut e);
            process_error(&mut socket, e, extended).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    fn parse(types: u16, oids: usize) -> Vec<u8> {
        let mut body = b"\0SELECT $1\0".to_vec();
        body.extend_from_slice(&types.to_be_bytes());
        body.extend(std::iter::repeat_n(0u8, oids * 4));
        typed(b'P', &body)
    }

    #[test]
    fn well_formed_messages_pass_whole_and_wait_for_the_rest() {
        let mut startup = Vec::new();
        let body = b"\0\x03\0\0user\0reader\0database\0lake\0\0";
        startup.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        startup.extend_from_slice(body);
        assert_eq!(
            next_message(&startup, Phase::StartUp),
            Ok(Some((startup.len(), Phase::Typed)))
        );
        assert_eq!(next_message(&startup[..10], Phase::StartUp), Ok(None));
        let bind = typed(b'B', b"\0\0\0\x01\0\x01\0\x01\0\0\0\x0242\0\x01\0\0");
        for message in [
            parse(1, 1),
            bind,
            typed(b'S', b""),
            typed(b'E', b"\0\0\0\0\0"),
        ] {
            assert_eq!(
                next_message(&message, Phase::Typed),
                Ok(Some((message.len(), Phase::Typed))),
                "{message:?}"
            );
        }
    }

    #[test]
    fn what_panicked_in_pgwire_is_refused() {
        // A declared length under 4.
        assert!(next_message(b"Q\0\0\0\x02", Phase::Typed).is_err());
        // A Parse declaring more parameter types than it carries.
        assert!(next_message(&parse(3, 1), Phase::Typed).is_err());
        // A Sync with a body, which pgwire would read as the next message.
        assert!(next_message(&typed(b'S', b"Q"), Phase::Typed).is_err());
        // An Execute without its row limit.
        assert!(next_message(&typed(b'E', b"\0"), Phase::Typed).is_err());
        // A start-up packet whose last pair has no end.
        assert!(next_message(b"\0\0\0\x0c\0\x03\0\0user", Phase::StartUp).is_err());
    }
}
