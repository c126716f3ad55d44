//! RESP on the wire: commands in (multibulk arrays of bulk strings, or
//! inline lines), replies out (RESP2 or RESP3). Bytes in, values out: no
//! I/O here.
//!
//! Every length a client declares is checked against a limit before any
//! byte is buffered or allocated for it, so a request such as
//! `*2147483647\r\n` costs nothing but its error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Arguments one command may carry (an `MSET` of 32,767 pairs).
pub const ARGS_MAX: usize = 1 << 16;
/// Bytes of one argument (a key or a value). Redis allows 512 MB; a
/// Felix cache value must also fit one batch (`log.batch_bytes_max`), so a
/// larger argument could never be stored.
pub const ARG_BYTES_MAX: usize = 8 << 20;
/// Bytes of one command, arguments and framing together: what a
/// connection buffers at most before the command is whole.
pub const COMMAND_BYTES_MAX: usize = 16 << 20;
/// Bytes of an inline command line, or of one header line (`*n`, `$n`),
/// before its end: Redis's own limit for inline requests.
pub const INLINE_BYTES_MAX: usize = 64 << 10;

/// A request that is not RESP: the connection is answered with the error
/// and closed, as Redis does (its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: a command of more than {COMMAND_BYTES_MAX} bytes")]
    CommandTooBig,
}

/// The next whole command at the front of `buf`, taken off it; `None` when
/// more bytes are needed (nothing is consumed then). An empty inline line
/// or an empty multibulk (`*0`) is consumed and yields an empty command.
pub fn next_command(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return inline(buf);
    }
    // Measure first, on the borrowed bytes: only a whole command is split
    // off, so a partial one costs no allocation.
    let Some((header_end, count)) = line_int(buf, 1, ProtocolError::MultibulkLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        buf.advance(header_end);
        return Ok(Some(Vec::new()));
    }
    let count = count as usize;
    if count > ARGS_MAX {
        return Err(ProtocolError::MultibulkLength);
    }
    let mut at = header_end;
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        if at >= buf.len() {
            return incomplete(buf);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError::ExpectedBulk(buf[at] as char));
        }
        let Some((len_end, len)) = line_int(buf, at + 1, ProtocolError::BulkLength)? else {
            return incomplete(buf);
        };
        if len < 0 || len as usize > ARG_BYTES_MAX {
            return Err(ProtocolError::BulkLength);
        }
        let len = len as usize;
        let end = len_end + len;
        if end + 2 > COMMAND_BYTES_MAX {
            return Err(ProtocolError::CommandTooBig);
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkLength);
        }
        spans.push((len_end, end));
        at = end + 2;
    }
    let whole = buf.split_to(at).freeze();
    Ok(Some(spans.into_iter().map(|(a, b)| whole.slice(a..b)).collect()))
}

/// More bytes are needed, unless the buffer already holds more than a
/// command may.
fn incomplete(buf: &BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.len() > COMMAND_BYTES_MAX {
        return Err(ProtocolError::CommandTooBig);
    }
    Ok(None)
}

/// The integer on the line starting at `from` (after its type byte), and
/// where the next line starts; `None` until the line is whole.
fn line_int(buf: &[u8], from: usize, bad: ProtocolError) -> Result<Option<(usize, i64)>, ProtocolError> {
    let rest = &buf[from.min(buf.len())..];
    let Some(nl) = rest.iter().take(INLINE_BYTES_MAX).position(|b| *b == b'\n') else {
        if rest.len() >= INLINE_BYTES_MAX {
            return Err(bad);
        }
        return Ok(None);
    };
    if nl == 0 || rest[nl - 1] != b'\r' {
        return Err(bad);
    }
    let digits = &rest[..nl - 1];
    // At most 20 characters: i64's range, and no allocation for garbage.
    if digits.is_empty() || digits.len() > 20 {
        return Err(bad);
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(bad)?;
    Ok(Some((from + nl + 1, n)))
}

/// An inline command (`PING\r\n`, `SET k "a b"\n`): arguments split on
/// blanks, with double quotes (and their escapes) and single quotes as
/// Redis's own parser reads them.
fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().take(INLINE_BYTES_MAX).position(|b| *b == b'\n') else {
        if buf.len() >= INLINE_BYTES_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    split_inline(line).map(Some)
}

fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        if args.len() == ARGS_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    i += 1;
                    match c {
                        b'"' => break,
                        b'\\' => {
                            let Some(&e) = line.get(i) else {
                                return Err(ProtocolError::UnbalancedQuotes);
                            };
                            i += 1;
                            match e {
                                b'n' => arg.push(b'\n'),
                                b'r' => arg.push(b'\r'),
                                b't' => arg.push(b'\t'),
                                b'b' => arg.push(8),
                                b'a' => arg.push(7),
                                b'x' if i + 1 < line.len()
                                    && line[i].is_ascii_hexdigit()
                                    && line[i + 1].is_ascii_hexdigit() =>
                                {
                                    let hex = std::str::from_utf8(&line[i..i + 2]).expect("hex digits");
                                    arg.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                                    i += 2;
                                }
                                other => arg.push(other),
                            }
                        }
                        c => arg.push(c),
                    }
                }
                // A closing quote must end the argument.
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    i += 1;
                    match c {
                        b'\'' => break,
                        b'\\' if line.get(i) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 1;
                        }
                        c => arg.push(c),
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
    Ok(args)
}

/// The protocol a connection speaks (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// One reply, written in the connection's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`, `+PONG`, `+string`.
    Status(&'static str),
    /// `-ERR ...`: the text includes its code (`ERR`, `NOPERM`, ...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing array (`SET ... GET` on nothing is a Nil; this is for
    /// replies Redis documents as a null array): `*-1` / `_`.
    NilArray,
    Array(Vec<Reply>),
    /// A map in RESP3; a flat array of its pairs in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A double in RESP3; its text as a bulk string in RESP2.
    Double(f64),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK")
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn text(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(e) => {
                // A newline would end the reply early and desynchronise
                // the client: an error's text is one line.
                let clean: Vec<u8> = e
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean)
            }
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => match proto {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::NilArray => match proto {
                Protocol::Resp2 => out.put_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                match proto {
                    Protocol::Resp2 => line(out, b'*', (2 * pairs.len()).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Double(d) => {
                let text = format_double(*d);
                match proto {
                    Protocol::Resp2 => Reply::text(&text).encode(proto, out),
                    Protocol::Resp3 => line(out, b',', text.as_bytes()),
                }
            }
        }
    }
}

/// A double as Redis prints one: the shortest text that reads back the
/// same, `inf`/`-inf`, and no trailing `.0` for whole numbers.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{d}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(c) = next_command(&mut buf)? {
            out.push(c);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
    }

    #[test]
    fn multibulk_inline_and_pipelines() {
        let got =
            parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n  get   k \n*1\r\n$4\r\nPING\r\n")
                .unwrap();
        assert_eq!(
            got,
            vec![
                args(&["SET", "k", ""]),
                args(&["PING"]),
                args(&["get", "k"]),
                args(&["PING"])
            ]
        );
        assert_eq!(
            parse_all(b"\r\n*0\r\n").unwrap(),
            vec![Vec::<Bytes>::new(), Vec::new()]
        );
    }

    #[test]
    fn inline_quotes_read_as_redis_reads_them() {
        let got = parse_all(b"SET \"a b\\n\\x41\" 'it\\'s'\r\n").unwrap();
        assert_eq!(got, vec![args(&["SET", "a b\nA", "it's"])]);
        for bad in [&b"SET \"open\r\n"[..], b"SET 'open\r\n", b"SET \"a\"b\r\n"] {
            assert_eq!(parse_all(bad), Err(ProtocolError::UnbalancedQuotes), "{bad:?}");
        }
    }

    #[test]
    fn a_partial_command_waits_and_consumes_nothing() {
        let whole = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(next_command(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(next_command(&mut buf), Ok(Some(args(&["GET", "hello"]))));
        }
    }

    #[test]
    fn declared_lengths_are_checked_before_anything_is_buffered() {
        let cases: [(&[u8], ProtocolError); 7] = [
            (b"*2147483647\r\n", ProtocolError::MultibulkLength),
            (b"*x\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n$9999999999\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$-5\r\n", ProtocolError::BulkLength),
            (b"*1\r\n:3\r\n", ProtocolError::ExpectedBulk(':')),
            (b"*1\r\n$3\r\nabcd\r\n", ProtocolError::BulkLength),
            (b"*1\n", ProtocolError::MultibulkLength),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(input);
            assert_eq!(next_command(&mut buf), Err(want), "{input:?}");
        }
        // A header line that never ends, and an inline line past the limit.
        let mut buf = BytesMut::from(&b"*1"[..]);
        buf.extend_from_slice(&vec![b'1'; INLINE_BYTES_MAX]);
        assert_eq!(next_command(&mut buf), Err(ProtocolError::MultibulkLength));
        let mut buf = BytesMut::from(&vec![b'a'; INLINE_BYTES_MAX][..]);
        assert_eq!(next_command(&mut buf), Err(ProtocolError::InlineTooBig));
        // Arguments that each fit but add up past a command's limit.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"*3\r\n");
        for _ in 0..2 {
            buf.extend_from_slice(format!("${ARG_BYTES_MAX}\r\n").as_bytes());
            buf.extend_from_slice(&vec![b'v'; ARG_BYTES_MAX]);
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(format!("${ARG_BYTES_MAX}\r\n").as_bytes());
        assert_eq!(next_command(&mut buf), Err(ProtocolError::CommandTooBig));
    }

    fn encoded(r: &Reply, p: Protocol) -> String {
        let mut out = BytesMut::new();
        r.encode(p, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_in_both_protocols() {
        use Protocol::*;
        assert_eq!(encoded(&Reply::ok(), Resp2), "+OK\r\n");
        assert_eq!(encoded(&Reply::err("ERR a\r\nb"), Resp2), "-ERR a  b\r\n");
        assert_eq!(encoded(&Reply::Int(-2), Resp3), ":-2\r\n");
        assert_eq!(encoded(&Reply::text("hi"), Resp2), "$2\r\nhi\r\n");
        assert_eq!(encoded(&Reply::Nil, Resp2), "$-1\r\n");
        assert_eq!(encoded(&Reply::Nil, Resp3), "_\r\n");
        assert_eq!(encoded(&Reply::NilArray, Resp2), "*-1\r\n");
        let m = Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]);
        assert_eq!(encoded(&m, Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&m, Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&Reply::Double(10.5), Resp3), ",10.5\r\n");
        assert_eq!(encoded(&Reply::Double(3.0), Resp2), "$1\r\n3\r\n");
        assert_eq!(
            encoded(&Reply::Array(vec![Reply::Nil, Reply::Int(1)]), Resp2),
            "*2\r\n$-1\r\n:1\r\n"
        );
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the parser answers a command, an error
        /// or "more", and never panics or consumes a partial command.
        #[test]
        fn any_bytes_are_a_command_an_error_or_more(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&input[..]);
            loop {
                let before = buf.len();
                match next_command(&mut buf) {
                    Ok(Some(_)) => proptest::prop_assert!(buf.len() < before),
                    Ok(None) => { proptest::prop_assert_eq!(buf.len(), before); break }
                    Err(_) => break,
                }
            }
        }

        /// Any arguments sent as a multibulk, in any pieces, read back.
        #[test]
        fn multibulk_round_trips(parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..8), cut in 0usize..400) {
            let mut wire = format!("*{}\r\n", parts.len()).into_bytes();
            for p in &parts {
                wire.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
                wire.extend_from_slice(p);
                wire.extend_from_slice(b"\r\n");
            }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = next_command(&mut buf).unwrap();
            if cut < wire.len() {
                proptest::prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[cut..]);
            } else {
                proptest::prop_assert!(first.is_some());
                return Ok(());
            }
            let got = next_command(&mut buf).unwrap().unwrap();
            let want: Vec<Bytes> = parts.into_iter().map(Bytes::from).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
