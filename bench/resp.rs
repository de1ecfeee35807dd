//! A minimal blocking RESP2 client for the benchmarks: writes pre-encoded commands into one
//! buffer and parses replies in place, as token offsets into its read buffer, without building
//! a value per field.
//!
//! Why not redis-rs for the limit: measured here, a redis-rs XREADGROUP COUNT 100 round trip
//! costs ~440 µs, mostly client-side parsing into `redis::Value`, so a "limit" client written
//! with it runs at the router's own speed and measures the client, not Redis. This one spends a
//! few microseconds per batch, so what it measures is Redis.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One token of a parsed reply; positions index the client's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// `$n` bulk string: start and end offsets.
    Bulk(usize, usize),
    /// `+` simple string.
    Simple(usize, usize),
    /// `-` error.
    Error(usize, usize),
    /// `:` integer.
    Int(i64),
    /// `*n` array header.
    Array(usize),
    /// `$-1` or `*-1`.
    Nil,
}

/// A blocking connection.
pub struct Raw {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Commands waiting for [`Raw::flush`].
    pub wbuf: Vec<u8>,
    /// Tokens of the last reply read by [`Raw::read`].
    pub toks: Vec<Tok>,
}

impl Raw {
    /// Connect to 127.0.0.1:`port` with TCP_NODELAY.
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect raw");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            rbuf: vec![0; 1 << 20],
            rpos: 0,
            rlen: 0,
            wbuf: Vec::with_capacity(1 << 20),
            toks: Vec::with_capacity(4096),
        }
    }

    /// Fail a read that waits longer than `d` (None: wait for ever).
    pub fn set_read_timeout(&self, d: Option<Duration>) {
        self.stream.set_read_timeout(d).expect("read timeout");
    }

    /// Append a command.
    pub fn cmd(&mut self, args: &[&[u8]]) {
        put_header(&mut self.wbuf, args.len());
        for a in args {
            put_arg(&mut self.wbuf, a);
        }
    }

    /// Write everything appended.
    pub fn flush(&mut self) {
        self.stream.write_all(&self.wbuf).expect("write");
        self.wbuf.clear();
    }

    /// The bytes of a token.
    pub fn bytes(&self, t: Tok) -> &[u8] {
        match t {
            Tok::Bulk(s, e) | Tok::Simple(s, e) | Tok::Error(s, e) => &self.rbuf[s..e],
            _ => b"",
        }
    }

    /// The read buffer, for tokens.
    pub fn buf(&self) -> &[u8] {
        &self.rbuf
    }

    /// Read one whole reply into `toks`. Panics on an error reply unless `allow_error`.
    /// Returns false when a read timeout passed before any byte of it arrived.
    pub fn read(&mut self) -> bool {
        self.toks.clear();
        loop {
            if let Some(end) = parse(&self.rbuf[..self.rlen], self.rpos, &mut self.toks) {
                self.rpos = end;
                return true;
            }
            self.toks.clear();
            if self.rpos == self.rlen {
                self.rpos = 0;
                self.rlen = 0;
            } else if self.rlen == self.rbuf.len() {
                if self.rpos > 0 {
                    self.rbuf.copy_within(self.rpos..self.rlen, 0);
                    self.rlen -= self.rpos;
                    self.rpos = 0;
                } else {
                    let n = self.rbuf.len();
                    self.rbuf.resize(n * 2, 0);
                }
            }
            match self.stream.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => panic!("redis closed the connection"),
                Ok(n) => self.rlen += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if self.rpos == self.rlen {
                        return false;
                    }
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Read `n` replies, panicking on an error reply.
    pub fn skip(&mut self, n: usize) {
        for _ in 0..n {
            assert!(self.read(), "reply timed out");
            if let Some(Tok::Error(s, e)) = self.toks.first().copied() {
                panic!("redis error: {}", String::from_utf8_lossy(&self.rbuf[s..e]));
            }
        }
    }

    /// Run one command and return its first token (integer or string replies).
    pub fn query(&mut self, args: &[&[u8]]) -> Tok {
        self.cmd(args);
        self.flush();
        assert!(self.read(), "reply timed out");
        self.toks[0]
    }

    /// Run one command returning an integer.
    pub fn int(&mut self, args: &[&[u8]]) -> i64 {
        match self.query(args) {
            Tok::Int(n) => n,
            Tok::Error(s, e) => panic!("redis error: {}", String::from_utf8_lossy(&self.rbuf[s..e])),
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    /// Run one command and return its reply as text (bulk or simple string).
    pub fn text(&mut self, args: &[&[u8]]) -> String {
        let t = self.query(args);
        String::from_utf8_lossy(self.bytes(t)).into_owned()
    }
}

/// `*n\r\n`.
pub fn put_header(w: &mut Vec<u8>, n: usize) {
    w.push(b'*');
    put_usize(w, n);
    w.extend_from_slice(b"\r\n");
}

/// `$len\r\nbytes\r\n`.
pub fn put_arg(w: &mut Vec<u8>, a: &[u8]) {
    w.push(b'$');
    put_usize(w, a.len());
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(a);
    w.extend_from_slice(b"\r\n");
}

fn put_usize(w: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
}

fn line(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let rest = buf.get(pos..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((pos + i, pos + i + 2))
}

fn int_of(s: &[u8]) -> i64 {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let n = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    if neg { -n } else { n }
}

/// Parse one reply starting at `pos`; its end, or None when incomplete.
fn parse(buf: &[u8], mut pos: usize, toks: &mut Vec<Tok>) -> Option<usize> {
    // Elements still expected by each open array.
    let mut open: Vec<usize> = Vec::new();
    loop {
        let kind = *buf.get(pos)?;
        let (end, next) = line(buf, pos + 1)?;
        let body = &buf[pos + 1..end];
        pos = next;
        let mut container = 0usize;
        match kind {
            b'$' => {
                let n = int_of(body);
                if n < 0 {
                    toks.push(Tok::Nil);
                } else {
                    let n = n as usize;
                    if buf.len() < pos + n + 2 {
                        return None;
                    }
                    toks.push(Tok::Bulk(pos, pos + n));
                    pos += n + 2;
                }
            }
            b'+' => toks.push(Tok::Simple(end - body.len(), end)),
            b'-' => toks.push(Tok::Error(end - body.len(), end)),
            b':' => toks.push(Tok::Int(int_of(body))),
            b'*' => {
                let n = int_of(body);
                if n < 0 {
                    toks.push(Tok::Nil);
                } else {
                    toks.push(Tok::Array(n as usize));
                    container = n as usize;
                }
            }
            other => panic!("unexpected RESP type byte {other}"),
        }
        if container > 0 {
            open.push(container);
            continue;
        }
        // One element done: close every array it completed.
        loop {
            match open.last_mut() {
                None => return Some(pos),
                Some(left) => {
                    *left -= 1;
                    if *left == 0 {
                        open.pop();
                    } else {
                        break;
                    }
                }
            }
        }
    }
}

/// The entries of an XREAD/XREADGROUP reply over one stream: (id, field/value tokens).
pub fn stream_entries(toks: &[Tok], out: &mut Vec<(Tok, std::ops::Range<usize>)>) {
    out.clear();
    // *1 *2 $key *N { *2 $id *2k ... }
    if toks.len() < 4 || toks[0] == Tok::Nil {
        return;
    }
    let mut i = 4;
    while i < toks.len() {
        // toks[i] = Array(2), toks[i+1] = id, toks[i+2] = Array(2k) or Nil
        let id = toks[i + 1];
        match toks[i + 2] {
            Tok::Array(n) => {
                out.push((id, i + 3..i + 3 + n));
                i += 3 + n;
            }
            _ => i += 3,
        }
    }
}

/// Parse the number after `tag` (`N#123#`) in `bytes`.
pub fn tagged(bytes: &[u8], tag: &[u8]) -> Option<u64> {
    let at = bytes.windows(tag.len()).position(|w| w == tag)? + tag.len();
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    Some(
        bytes[at..at + digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}
