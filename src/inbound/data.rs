//! The DATA phase (RFC 5321 §4.1.1.4, §4.5.2): the message arrives as lines, ends with a line
//! holding a single `.`, and every line the client began with a `.` carries an extra one
//! (dot-stuffing) that we remove here.
//!
//! Line ends and SMTP smuggling. Only `<CR><LF>.<CR><LF>` ends the data: a `.` line reached
//! through a bare LF, or ended by a bare LF, is content. A bare LF inside the content is stored
//! as CRLF, as if the client had sent the standard line end (Postfix's default
//! `smtpd_forbid_bare_newline = normalize`). Because we store normalized CRLF lines and the
//! delivery side dot-stuffs every line on output, a `<LF>.<CR><LF>` or `<CR><LF>.<LF>` that a
//! sloppy next hop might read as end-of-data can never leave mxguard as one: the attack known
//! as SMTP smuggling needs both halves to disagree, and here neither half is ambiguous.
//!
//! The decoder is a byte-at-a-time state machine, so a line of any length costs no buffer, and
//! a message over the size limit stops being stored while the rest of it is still read to its
//! end (RFC 1870 §6.3: the server keeps reading, then rejects).

/// Where the decoder stands in the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At the first byte of a line. `after_crlf`: the previous line ended in a real CRLF (or
    /// this is the first line), so a lone `.` here may end the data.
    LineStart { after_crlf: bool },
    /// Saw a `.` as the first byte of a line.
    Dot { after_crlf: bool },
    /// Saw `.` then CR at the start of a line.
    DotCr { after_crlf: bool },
    /// Inside a line.
    InLine,
    /// Inside a line, just after a CR whose meaning the next byte decides.
    Cr,
}

/// Decodes the DATA stream into the stored message: CRLF line ends, dots unstuffed, bounded.
#[derive(Debug)]
pub struct DataDecoder {
    position: Position,
    /// The decoded message, kept only while it fits in `limit`.
    message: Vec<u8>,
    /// Bytes of decoded content so far, counted even after `message` is dropped.
    size: u64,
    limit: u64,
}

/// What one call of [`DataDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed; the terminating `.` line has not come yet.
    NeedMore,
    /// The data ended after this many input bytes; the rest belongs to the next command.
    Done(usize),
}

/// The finished DATA phase.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Message(Vec<u8>),
    /// The content exceeded the limit; `size` is how large it was.
    TooBig {
        size: u64,
    },
}

impl DataDecoder {
    pub fn new(limit: u64) -> Self {
        DataDecoder {
            position: Position::LineStart { after_crlf: true },
            message: Vec::new(),
            size: 0,
            limit,
        }
    }

    /// Consumes `input` up to and including the end-of-data line.
    pub fn feed(&mut self, input: &[u8]) -> Feed {
        for (i, &byte) in input.iter().enumerate() {
            if self.step(byte) {
                return Feed::Done(i + 1);
            }
        }
        Feed::NeedMore
    }

    pub fn finish(self) -> Decoded {
        if self.size > self.limit {
            Decoded::TooBig { size: self.size }
        } else {
            Decoded::Message(self.message)
        }
    }

    /// Advances by one byte; true when this byte completed `<CR><LF>.<CR><LF>`.
    fn step(&mut self, byte: u8) -> bool {
        use Position::*;
        match (self.position, byte) {
            (LineStart { after_crlf }, b'.') => self.position = Dot { after_crlf },
            (LineStart { .. }, _) => self.in_line(byte),
            (Dot { after_crlf }, b'\r') => self.position = DotCr { after_crlf },
            // A `.` line ended by a bare LF never ends the data: keep it as content.
            (Dot { .. }, b'\n') => {
                self.emit(b".\r\n");
                self.position = LineStart { after_crlf: false };
            }
            // RFC 5321 §4.5.2: a leading dot is removed; the rest of the line is content.
            (Dot { .. }, _) => self.in_line(byte),
            (DotCr { after_crlf: true }, b'\n') => return true,
            // `<LF>.<CR><LF>`: the line before ended bare, so this is content, not the end.
            (DotCr { after_crlf: false }, b'\n') => {
                self.emit(b".\r\n");
                self.position = LineStart { after_crlf: true };
            }
            // A stuffed line whose content begins with CR: drop the dot, keep the CR.
            (DotCr { .. }, _) => {
                self.position = Cr;
                self.step_cr(byte);
            }
            (InLine, _) => self.in_line(byte),
            (Cr, _) => self.step_cr(byte),
        }
        false
    }

    fn in_line(&mut self, byte: u8) {
        match byte {
            b'\r' => self.position = Position::Cr,
            // A bare LF: stored as CRLF (the normalization the module doc explains).
            b'\n' => {
                self.emit(b"\r\n");
                self.position = Position::LineStart { after_crlf: false };
            }
            _ => {
                self.emit(&[byte]);
                self.position = Position::InLine;
            }
        }
    }

    /// The byte after a CR that is not yet known to be part of a line end.
    fn step_cr(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                self.emit(b"\r\n");
                self.position = Position::LineStart { after_crlf: true };
            }
            // A bare CR is content; the new CR's meaning is decided by the next byte.
            b'\r' => self.emit(b"\r"),
            _ => {
                self.emit(&[b'\r', byte]);
                self.position = Position::InLine;
            }
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            // Never buffer beyond the limit: drop what we have and only count from here on.
            if !self.message.is_empty() {
                self.message = Vec::new();
            }
        } else {
            self.message.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in one piece and byte by byte (both must agree); returns the message
    /// and the bytes left after the end-of-data line, or `None` if the data did not end.
    fn decode(input: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let whole = decode_chunks(input, input.len().max(1));
        let bytewise = decode_chunks(input, 1);
        assert_eq!(whole, bytewise, "chunking changed the result");
        whole
    }

    fn decode_chunks(input: &[u8], chunk: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut d = DataDecoder::new(1 << 20);
        let mut offset = 0;
        for piece in input.chunks(chunk) {
            if let Feed::Done(n) = d.feed(piece) {
                let rest = input[offset + n..].to_vec();
                return match d.finish() {
                    Decoded::Message(m) => Some((m, rest)),
                    Decoded::TooBig { .. } => None,
                };
            }
            offset += piece.len();
        }
        None
    }

    fn good(input: &str, message: &str) {
        let (m, rest) = decode(input.as_bytes()).expect("data should end");
        assert_eq!(String::from_utf8_lossy(&m), message, "input {input:?}");
        assert!(rest.is_empty(), "left over {rest:?}");
    }

    fn unterminated(input: &str) {
        assert!(decode(input.as_bytes()).is_none(), "{input:?} must not end");
    }

    #[test]
    fn plain_message() {
        good(
            "Subject: a\r\n\r\nbody\r\n.\r\n",
            "Subject: a\r\n\r\nbody\r\n",
        );
        good(".\r\n", "");
    }

    #[test]
    fn dot_unstuffing() {
        // RFC 5321 §4.5.2: the first dot of a line is removed.
        good("..\r\n.\r\n", ".\r\n");
        good("..hidden\r\n...\r\n.\r\n", ".hidden\r\n..\r\n");
        good("a.b\r\n.\r\n", "a.b\r\n");
    }

    #[test]
    fn bare_lf_is_normalized_and_never_ends_data() {
        good("a\nb\r\n.\r\n", "a\r\nb\r\n");
        // The smuggling shapes: none of them ends the data.
        unterminated("a\r\n.\nMAIL FROM:<x@y>\r\n");
        unterminated("a\n.\r\nMAIL FROM:<x@y>\r\n");
        unterminated("a\n.\nb\r\n");
        good("a\n.\r\nb\r\n.\r\n", "a\r\n.\r\nb\r\n");
        good("a\r\n.\nb\r\n.\r\n", "a\r\n.\r\nb\r\n");
    }

    #[test]
    fn bare_cr_is_content() {
        good("a\rb\r\n.\r\n", "a\rb\r\n");
        good("a\r\r\n.\r\n", "a\r\r\n");
        good(".\rx\r\n.\r\n", "\rx\r\n");
        unterminated("a\r\n.\r.\r\n");
    }

    #[test]
    fn pipelined_command_after_data_is_left() {
        let (m, rest) = decode(b"x\r\n.\r\nQUIT\r\n").unwrap();
        assert_eq!(m, b"x\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn oversize_is_counted_not_stored() {
        let mut d = DataDecoder::new(10);
        assert_eq!(d.feed(&[b'x'; 4096]), Feed::NeedMore);
        assert!(d.message.is_empty(), "nothing buffered beyond the limit");
        assert_eq!(d.feed(b"\r\n.\r\n"), Feed::Done(5));
        assert_eq!(d.finish(), Decoded::TooBig { size: 4098 });
        let mut d = DataDecoder::new(3);
        d.feed(b"ab\r\n.\r\n");
        assert_eq!(d.finish(), Decoded::TooBig { size: 4 });
        let mut d = DataDecoder::new(4);
        d.feed(b"ab\r\n.\r\n");
        assert_eq!(d.finish(), Decoded::Message(b"ab\r\n".to_vec()));
    }
}
