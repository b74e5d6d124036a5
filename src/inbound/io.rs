//! The SMTP server's side of the byte stream: bounded command lines, the DATA stream, and
//! replies held back while pipelined commands are still waiting in the input (RFC 2920 §3.2:
//! a server may send the replies of a group together, and must send them before it blocks).

use super::data::{DataDecoder, Feed};
use crate::reply::Reply;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, and extensions may raise it
/// (SIZE, DSN's ORCPT/ENVID each add up to 500); 2048 gives them all room.
pub const MAX_LINE: usize = 2048;

/// Input is read in pieces of this size; a command line always fits.
const READ_BUFFER: usize = 8192;

/// Replies are flushed once this much is waiting, even inside a pipelined group.
const MAX_PENDING_OUTPUT: usize = 16 * 1024;

/// How long a closing session waits to deliver its last words.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("lost connection")]
    Closed,
    #[error("timeout exceeded")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One command line, or the fact that it was too long (and has been skipped to its end).
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

pub struct SmtpIo<S> {
    stream: S,
    /// Received bytes not yet consumed are `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// A line went past `MAX_LINE`; its remaining bytes are dropped up to the next LF.
    skipping: bool,
    /// Replies not yet written.
    output: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpIo<S> {
    pub fn new(stream: S) -> Self {
        SmtpIo {
            stream,
            input: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            skipping: false,
            output: Vec::new(),
        }
    }

    /// Bytes the client sent that no command has consumed yet.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end
    }

    /// Gives back the stream, for the TLS handshake. Callers check `has_buffered_input` first:
    /// whatever is still buffered is dropped.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Queues a reply; it is written before the next blocking read or on `flush`.
    pub async fn send(&mut self, reply: &Reply) -> Result<(), IoError> {
        self.output.extend_from_slice(reply.to_wire().as_bytes());
        if self.output.len() >= MAX_PENDING_OUTPUT {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), IoError> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes pending replies and closes our direction of the stream (a TLS close_notify, a
    /// TCP FIN), giving a client that does not read at most `CLOSE_TIMEOUT`.
    pub async fn close(&mut self) {
        let close = async {
            self.flush().await?;
            self.stream.shutdown().await.map_err(IoError::from)
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }

    /// Writes pending replies, then waits for more input until `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), IoError> {
        self.flush().await?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.stream.read(&mut self.input[self.end..]);
        match tokio::time::timeout_at(deadline, read).await {
            Err(_) => Err(IoError::Timeout),
            Ok(Ok(0)) => Err(IoError::Closed),
            Ok(Ok(n)) => {
                self.end += n;
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Reads one line ended by LF (a CR before it is dropped too: commands may end in a bare
    /// LF). The whole line must arrive within `timeout`, not each piece of it: a client that
    /// trickles a byte now and then (slowloris) is cut off like a silent one (Postfix's
    /// `smtpd_per_record_deadline`).
    pub async fn read_line(&mut self, timeout: Duration) -> Result<Line, IoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = &self.input[self.start..self.end];
            if let Some(lf) = pending.iter().position(|&b| b == b'\n') {
                let mut line = &pending[..lf];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                let result = if self.skipping || lf + 1 > MAX_LINE {
                    Line::TooLong
                } else {
                    Line::Complete(line.to_vec())
                };
                self.start += lf + 1;
                self.skipping = false;
                return Ok(result);
            }
            if self.skipping || pending.len() >= MAX_LINE {
                // Never buffer an over-long line: drop it and remember to skip to its end.
                self.skipping = true;
                self.start = self.end;
            }
            self.fill(deadline).await?;
        }
    }

    /// Feeds input to `decoder` until the end-of-data line, waiting at most `timeout` for each
    /// piece and until `deadline` for the whole.
    pub async fn read_data(
        &mut self,
        decoder: &mut DataDecoder,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), IoError> {
        loop {
            if self.start < self.end {
                match decoder.feed(&self.input[self.start..self.end]) {
                    Feed::Done(n) => {
                        self.start += n;
                        return Ok(());
                    }
                    Feed::NeedMore => self.start = self.end,
                }
            }
            self.fill(deadline.min(Instant::now() + timeout)).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::data::Decoded;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn lines_pipelined_bare_lf_and_too_long() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut io = SmtpIo::new(server);
        let mut client = client;
        let long = "X".repeat(MAX_LINE + 10);
        let input = format!("NOOP\r\nRSET\nNOOP {long}\r\nQUIT\r\n");
        client.write_all(input.as_bytes()).await.unwrap();
        assert_eq!(
            io.read_line(T).await.unwrap(),
            Line::Complete(b"NOOP".to_vec())
        );
        assert!(io.has_buffered_input());
        assert_eq!(
            io.read_line(T).await.unwrap(),
            Line::Complete(b"RSET".to_vec())
        );
        assert_eq!(io.read_line(T).await.unwrap(), Line::TooLong);
        assert_eq!(
            io.read_line(T).await.unwrap(),
            Line::Complete(b"QUIT".to_vec())
        );
        assert!(!io.has_buffered_input());
        drop(client);
        assert!(matches!(io.read_line(T).await, Err(IoError::Closed)));
    }

    #[tokio::test]
    async fn line_of_exactly_the_limit_is_accepted() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut io = SmtpIo::new(server);
        let line = format!("{}\r\n", "Y".repeat(MAX_LINE - 2));
        client.write_all(line.as_bytes()).await.unwrap();
        assert!(
            matches!(io.read_line(T).await.unwrap(), Line::Complete(l) if l.len() == MAX_LINE - 2)
        );
        let line = format!("{}\r\n", "Y".repeat(MAX_LINE - 1));
        client.write_all(line.as_bytes()).await.unwrap();
        assert_eq!(io.read_line(T).await.unwrap(), Line::TooLong);
    }

    #[tokio::test]
    async fn idle_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut io = SmtpIo::new(server);
        assert!(matches!(
            io.read_line(Duration::from_millis(50)).await,
            Err(IoError::Timeout)
        ));
    }

    #[tokio::test]
    async fn data_then_next_command() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = SmtpIo::new(server);
        client
            .write_all(b"a\r\n..b\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut d = DataDecoder::new(1000);
        io.read_data(&mut d, T, Instant::now() + T).await.unwrap();
        assert_eq!(d.finish(), Decoded::Message(b"a\r\n.b\r\n".to_vec()));
        assert_eq!(
            io.read_line(T).await.unwrap(),
            Line::Complete(b"QUIT".to_vec())
        );
    }
}
