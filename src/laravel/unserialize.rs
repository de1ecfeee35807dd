//! Reading Laravel job payloads back, with a small PHP `unserialize`.

use super::*;

/// Reads a job payload that a Laravel producer (or [`build_job`]) wrote.
///
/// For `CallQueuedHandler@call` jobs the message is the job object's `data` property (or its
/// first property when it has none), unserialized from `data.command`; a command that does
/// not start with `O:` is encrypted (`ShouldBeEncrypted`) and gives `data: None`. For any
/// other `job` (a `Class@method` handler), the message is `data` itself. A PHP array whose
/// keys are `0..n-1` in order becomes a JSON array, any other array an object.
///
/// Never panics, whatever the input.
///
/// # Errors
///
/// The payload is not a JSON object, has no string `job`, is a queued command without a
/// string `data.command`, or its command is a malformed serialized object (including one
/// nested deeper than 128 levels, which this reader refuses rather than overflow its stack).
pub fn parse_job(payload: &[u8]) -> Result<JobView, LaravelError> {
    let value: Value = serde_json::from_slice(payload).map_err(LaravelError::NotJson)?;
    let Value::Object(envelope) = value else {
        return Err(LaravelError::NotAnObject);
    };
    let text = |map: &Map<String, Value>, key: &str| map.get(key)?.as_str().map(str::to_owned);
    let job = text(&envelope, "job").ok_or(LaravelError::MissingJob)?;
    let mut view = JobView {
        uuid: text(&envelope, "uuid"),
        display_name: text(&envelope, "displayName"),
        job,
        command_name: None,
        data: None,
    };
    if view.job != CALL_QUEUED_HANDLER {
        view.data = envelope.get("data").cloned();
        return Ok(view);
    }
    let data = envelope.get("data").and_then(Value::as_object);
    view.command_name = data.and_then(|d| text(d, "commandName"));
    let command = data
        .and_then(|d| d.get("command"))
        .and_then(Value::as_str)
        .ok_or(LaravelError::MissingCommand)?;
    if !command.starts_with("O:") {
        // Laravel decrypts anything else with APP_KEY; we cannot.
        return Ok(view);
    }
    let mut parser = Unserializer {
        input: command.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let object = parser.value()?;
    if let Php::Object { props, .. } = object {
        let chosen = props
            .iter()
            .find(|(key, _)| unmangled(key) == Some(DEFAULT_PROPERTY.as_bytes()))
            .or_else(|| props.first());
        view.data = chosen.and_then(|(_, value)| value.to_json());
    }
    Ok(view)
}

/// A PHP value as `unserialize` produces it, reduced to what JSON can need.
#[derive(Debug)]
pub(super) enum Php {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Array(Vec<(PhpKey, Php)>),
    Object {
        props: Vec<(PhpKey, Php)>,
    },
    /// References (`r:`, `R:`), custom-serialized objects (`C:`) and enums (`E:`): parsed to
    /// skip them, but they have no JSON form.
    Opaque,
}

#[derive(Debug, PartialEq)]
pub(super) enum PhpKey {
    Int(i64),
    Str(Vec<u8>),
}

/// A property name without PHP's visibility mangling (`\0*\0name`, `\0Class\0name`).
pub(super) fn unmangled(key: &PhpKey) -> Option<&[u8]> {
    match key {
        PhpKey::Str(name) => match name.strip_prefix(b"\0") {
            Some(rest) => rest.iter().position(|&b| b == 0).map(|nul| &rest[nul + 1..]),
            None => Some(name),
        },
        PhpKey::Int(_) => None,
    }
}

impl Php {
    pub(super) fn to_json(&self) -> Option<Value> {
        Some(match self {
            Php::Null => Value::Null,
            Php::Bool(b) => Value::Bool(*b),
            Php::Int(i) => Value::from(*i),
            Php::Float(f) => Value::Number(Number::from_f64(*f)?),
            Php::Str(bytes) => Value::String(String::from_utf8(bytes.clone()).ok()?),
            Php::Array(entries) => {
                let is_list = entries.iter().enumerate().all(|(index, (key, _))| match key {
                    PhpKey::Int(i) => usize::try_from(*i).ok() == Some(index),
                    PhpKey::Str(_) => false,
                });
                if is_list {
                    Value::Array(entries.iter().map(|(_, v)| v.to_json()).collect::<Option<_>>()?)
                } else {
                    let mut map = Map::with_capacity(entries.len());
                    for (key, item) in entries {
                        let key = match key {
                            PhpKey::Int(i) => i.to_string(),
                            PhpKey::Str(bytes) => String::from_utf8(bytes.clone()).ok()?,
                        };
                        map.insert(key, item.to_json()?);
                    }
                    Value::Object(map)
                }
            }
            Php::Object { .. } | Php::Opaque => return None,
        })
    }
}

/// A PHP `unserialize` over untrusted bytes: bounded depth, bounded allocation, no panics.
pub(super) struct Unserializer<'a> {
    pub(super) input: &'a [u8],
    pub(super) pos: usize,
    pub(super) depth: usize,
}

impl Unserializer<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, LaravelError> {
        Err(LaravelError::Unserialize {
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), LaravelError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected `{}`", char::from(byte)))
        }
    }

    /// The bytes up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], LaravelError> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        match rest.iter().position(|&b| b == end) {
            Some(len) => {
                let start = self.pos;
                self.pos += len + 1;
                Ok(&self.input[start..start + len])
            }
            None => self.fail(format!("missing `{}`", char::from(end))),
        }
    }

    /// A signed decimal terminated by `end`, as PHP's `iv` (`[+-]?[0-9]+`). Like PHP 8.2's
    /// `unserialize`, a value beyond int64 saturates instead of failing.
    fn int(&mut self, end: u8) -> Result<i64, LaravelError> {
        let start = self.pos;
        let text = self.until(end)?;
        let (negative, digits) = match text {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            self.pos = start;
            return self.fail("expected an integer");
        }
        let mut value: i64 = 0;
        for &digit in digits {
            let digit = i64::from(digit - b'0');
            value = value
                .saturating_mul(10)
                .saturating_add(if negative { -digit } else { digit });
        }
        Ok(value)
    }

    /// An unsigned length terminated by `end` (`[0-9]+`, or `+[0-9]+` where PHP allows it).
    fn len(&mut self, end: u8, allow_plus: bool) -> Result<usize, LaravelError> {
        let start = self.pos;
        let text = self.until(end)?;
        let digits = match text {
            [b'+', rest @ ..] if allow_plus => rest,
            _ => text,
        };
        let parsed = if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            None
        } else {
            std::str::from_utf8(digits).ok().and_then(|t| t.parse().ok())
        };
        match parsed {
            Some(len) => Ok(len),
            None => {
                self.pos = start;
                self.fail("expected a length")
            }
        }
    }

    /// `"<class name>"` of `len` bytes, checked the way `unserialize` checks it.
    fn class_name(&mut self, len: usize) -> Result<(), LaravelError> {
        let start = self.pos;
        let name = self.quoted(len)?;
        let valid = !name.is_empty()
            && name[0] != b'\\'
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'\\' || b >= 0x80);
        if valid {
            Ok(())
        } else {
            self.pos = start;
            self.fail("invalid class name")
        }
    }

    /// `"<len bytes>"`.
    fn quoted(&mut self, len: usize) -> Result<&[u8], LaravelError> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = match start.checked_add(len) {
            Some(end) if end <= self.input.len() => end,
            _ => return self.fail(format!("string of {len} bytes runs past the end")),
        };
        self.pos = end;
        self.expect(b'"')?;
        Ok(&self.input[start..end])
    }

    /// Capacity for `count` entries that cannot claim more than the remaining input: each
    /// entry takes at least two bytes.
    fn capacity(&self, count: usize) -> usize {
        count.min(self.input.len().saturating_sub(self.pos) / 2)
    }

    fn entries(&mut self, count: usize) -> Result<Vec<(PhpKey, Php)>, LaravelError> {
        self.expect(b'{')?;
        let mut entries = Vec::with_capacity(self.capacity(count));
        for _ in 0..count {
            let key = match self.value()? {
                Php::Int(i) => PhpKey::Int(i),
                Php::Str(bytes) => match std::str::from_utf8(&bytes).ok().and_then(php_int_key) {
                    // PHP's symbol tables turn numeric string keys into int keys.
                    Some(i) => PhpKey::Int(i),
                    None => PhpKey::Str(bytes),
                },
                _ => return self.fail("array keys must be `i:` or `s:`"),
            };
            let value = self.value()?;
            entries.push((key, value));
        }
        self.expect(b'}')?;
        Ok(entries)
    }

    pub(super) fn value(&mut self) -> Result<Php, LaravelError> {
        if self.depth >= MAX_UNSERIALIZE_DEPTH {
            return self.fail(format!("nested deeper than {MAX_UNSERIALIZE_DEPTH} levels"));
        }
        self.depth += 1;
        let result = self.value_inner();
        self.depth -= 1;
        result
    }

    fn value_inner(&mut self) -> Result<Php, LaravelError> {
        let Some(tag) = self.peek() else {
            return self.fail("unexpected end of input");
        };
        self.pos += 1;
        if tag == b'N' {
            self.expect(b';')?;
            return Ok(Php::Null);
        }
        if !b"bidsSaOCrRE".contains(&tag) {
            return self.unknown_type(tag);
        }
        self.expect(b':')?;
        match tag {
            b'b' => match self.until(b';')? {
                b"0" => Ok(Php::Bool(false)),
                b"1" => Ok(Php::Bool(true)),
                _ => self.fail("expected `0` or `1` after `b:`"),
            },
            b'i' => self.int(b';').map(Php::Int),
            b'd' => {
                let start = self.pos;
                let text = self.until(b';')?;
                match parse_php_float(text) {
                    Some(f) => Ok(Php::Float(f)),
                    None => {
                        self.pos = start;
                        self.fail("expected a float")
                    }
                }
            }
            b's' => {
                let len = self.len(b':', false)?;
                let bytes = self.quoted(len)?.to_vec();
                self.expect(b';')?;
                Ok(Php::Str(bytes))
            }
            b'S' => {
                let len = self.len(b':', false)?;
                let bytes = self.escaped_string(len)?;
                self.expect(b';')?;
                Ok(Php::Str(bytes))
            }
            b'a' => {
                let count = self.len(b':', false)?;
                self.entries(count).map(Php::Array)
            }
            b'O' => {
                let len = self.len(b':', false)?;
                self.class_name(len)?;
                self.expect(b':')?;
                let count = self.len(b':', true)?;
                let props = self.entries(count)?;
                Ok(Php::Object { props })
            }
            b'C' => {
                let len = self.len(b':', false)?;
                self.class_name(len)?;
                self.expect(b':')?;
                let len = self.len(b':', true)?;
                self.expect(b'{')?;
                match self.pos.checked_add(len) {
                    Some(end) if end <= self.input.len() => self.pos = end,
                    _ => return self.fail("custom object data runs past the end"),
                }
                self.expect(b'}')?;
                Ok(Php::Opaque)
            }
            b'r' | b'R' => {
                self.int(b';')?;
                Ok(Php::Opaque)
            }
            b'E' => {
                let len = self.len(b':', false)?;
                let start = self.pos;
                if !self.quoted(len)?.contains(&b':') {
                    self.pos = start;
                    return self.fail("expected `Enum:Case`");
                }
                self.expect(b';')?;
                Ok(Php::Opaque)
            }
            _ => self.unknown_type(tag),
        }
    }

    /// Fails at the type letter `tag`, which was just consumed.
    fn unknown_type<T>(&mut self, tag: u8) -> Result<T, LaravelError> {
        self.pos -= 1;
        self.fail(format!("unknown type `{}`", tag.escape_ascii()))
    }

    /// The body of an `S:` string: `len` bytes where `\xx` (two hex digits) stands for one.
    fn escaped_string(&mut self, len: usize) -> Result<Vec<u8>, LaravelError> {
        self.expect(b'"')?;
        let mut bytes = Vec::with_capacity(self.capacity(len));
        while bytes.len() < len {
            match self.peek() {
                Some(b'\\') => {
                    let hex = self.input.get(self.pos + 1..self.pos + 3);
                    let byte = hex
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match byte {
                        Some(b) => bytes.push(b),
                        None => return self.fail("bad `\\xx` escape in `S:` string"),
                    }
                    self.pos += 3;
                }
                Some(b) => {
                    bytes.push(b);
                    self.pos += 1;
                }
                None => return self.fail("unexpected end of input"),
            }
        }
        self.expect(b'"')?;
        Ok(bytes)
    }
}

/// The float text PHP's `unserialize` accepts after `d:`: decimal, exponent, `INF`, `-INF`,
/// `NAN`.
pub(super) fn parse_php_float(text: &[u8]) -> Option<f64> {
    match text {
        b"INF" => Some(f64::INFINITY),
        b"-INF" => Some(f64::NEG_INFINITY),
        b"NAN" => Some(f64::NAN),
        // Rust's parser also takes `inf`, `nan`, `infinity`: allow only digits and friends.
        _ if !text.is_empty()
            && text
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            std::str::from_utf8(text).ok()?.parse().ok()
        }
        _ => None,
    }
}
