//! PHP `serialize` and PHP-flavoured `json_encode` of a JSON value.

use super::*;

/// Appends the bytes of PHP's `serialize(json_decode($json, true))` for `value`.
///
/// Objects and arrays both become PHP arrays; object keys that are canonical int64 decimals
/// (`"0"`, `"-5"`, not `"01"` or `"-0"`) become `i:` keys, as PHP's symbol tables do; numbers
/// outside int64 become `d:` with PHP's float formatting (`serialize_precision = -1`).
pub fn php_serialize(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(true) => out.extend_from_slice(b"b:1;"),
        Value::Bool(false) => out.extend_from_slice(b"b:0;"),
        Value::Number(n) => match php_number(n) {
            PhpNumber::Int(i) => push_fmt(out, format_args!("i:{i};")),
            PhpNumber::Float(f) => {
                let mut text = String::new();
                push_php_float(f, 'E', &mut text);
                push_fmt(out, format_args!("d:{text};"));
            }
        },
        Value::String(s) => push_php_string(s.as_bytes(), out),
        Value::Array(items) => {
            push_fmt(out, format_args!("a:{}:{{", items.len()));
            for (index, item) in items.iter().enumerate() {
                push_fmt(out, format_args!("i:{index};"));
                php_serialize(item, out);
            }
            out.push(b'}');
        }
        Value::Object(map) => {
            push_fmt(out, format_args!("a:{}:{{", map.len()));
            for (key, item) in map {
                match php_int_key(key) {
                    Some(i) => push_fmt(out, format_args!("i:{i};")),
                    None => push_php_string(key.as_bytes(), out),
                }
                php_serialize(item, out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON number as PHP's `json_decode` types it.
pub(super) enum PhpNumber {
    Int(i64),
    Float(f64),
}

pub(super) fn php_number(n: &Number) -> PhpNumber {
    if let Some(i) = n.as_i64() {
        return PhpNumber::Int(i);
    }
    // u64 above i64::MAX and anything with a fraction or exponent are floats in PHP too.
    // `as_f64` only fails under serde_json's `arbitrary_precision` for out-of-range values,
    // where PHP's strtod gives INF; parsing the text reproduces that.
    let f = n.as_f64().unwrap_or_else(|| n.to_string().parse().unwrap_or(f64::NAN));
    PhpNumber::Float(f)
}

/// The int key PHP's symbol table makes of `key`, if it is a canonical int64 decimal.
pub(super) fn php_int_key(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('-').unwrap_or(key);
    let canonical = match digits.as_bytes() {
        [] => false,
        [b'0'] => digits.len() == key.len(), // "0" yes, "-0" no
        [b'0', ..] => false,
        bytes => bytes.iter().all(u8::is_ascii_digit),
    };
    if canonical { key.parse().ok() } else { None }
}

pub(super) fn push_php_string(bytes: &[u8], out: &mut Vec<u8>) {
    push_fmt(out, format_args!("s:{}:\"", bytes.len()));
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\";");
}

pub(super) fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = text.write_fmt(args);
    out.extend_from_slice(text.as_bytes());
}

/// Appends `f` the way PHP's `php_gcvt(f, 17, '.', exp_char)` does with
/// `serialize_precision = -1`: the shortest round-trip digits, in exponent form (`1.0E+25`,
/// `1.0E-5`) when the decimal exponent is above 16 or below -4.
pub(super) fn push_php_float(f: f64, exp_char: char, out: &mut String) {
    if f.is_nan() {
        out.push_str("NAN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "INF" } else { "-INF" });
        return;
    }
    let (digits, exp) = shortest_digits(f.abs());
    // zend_dtoa's decpt: the value is 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-3..=17).contains(&decpt) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        out.push('.');
        out.push_str(if rest.is_empty() { "0" } else { rest });
        out.push(exp_char);
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{}", exp.unsigned_abs());
    } else if decpt < 0 {
        out.push_str("0.");
        for _ in decpt..0 {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let decpt = decpt.unsigned_abs() as usize;
        if decpt == 0 {
            out.push('0');
        }
        for i in 0..decpt {
            out.push(digits.as_bytes().get(i).map_or('0', |&b| char::from(b)));
        }
        if digits.len() > decpt {
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
}

/// The digits and decimal exponent of zend_dtoa mode 0 for a finite `f >= 0`: the fewest
/// significant digits that read back as `f`, and among those the ones closest to `f`, ties to
/// even (`1307953561161475.25` gives `…475.2`).
///
/// Rust's `{:e}` finds the fewest digits, but breaks a tie between two equally close
/// candidates upwards (`…475.3`); its fixed-precision `{:.N$e}` rounds exactly, ties to even,
/// so it gives zend_dtoa's choice whenever that choice reads back as `f`.
pub(super) fn shortest_digits(f: f64) -> (String, i32) {
    let split = |sci: &str| -> (String, i32) {
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
        let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        while digits.len() > 1 && digits.ends_with('0') {
            digits.pop();
        }
        (digits, exp.parse().unwrap_or(0))
    };
    let shortest = split(&format!("{f:e}"));
    let nearest = format!("{:.*e}", shortest.0.len().saturating_sub(1), f);
    if nearest.parse::<f64>().is_ok_and(|back| back == f) {
        split(&nearest)
    } else {
        shortest
    }
}

// ---------------------------------------------------------------------------------------------
// PHP json_encode
// ---------------------------------------------------------------------------------------------

/// Returns what PHP prints for `json_encode(json_decode($json, true), $flags)`, where `$flags`
/// is `JSON_UNESCAPED_UNICODE` when `unescaped_unicode` is set and `0` otherwise.
///
/// That is PHP's normalised form of a message: objects whose keys are `0..n-1` in order (and
/// `{}`) become lists, numbers outside int64 become floats (`1.2345678901234567e+19`), `2.0`
/// becomes `2`, `/` is escaped as `\/`, control characters as `\u00XX` (with `\b \f \n \r \t`),
/// U+2028/U+2029 always escaped, other non-ASCII raw with the flag and `\uXXXX` without it.
/// A job that logs `json_encode($this->data)` writes exactly this with `unescaped_unicode =
/// false`; Laravel's envelope uses `true`.
pub fn php_json_encode(value: &Value, unescaped_unicode: bool) -> String {
    let mut out = String::new();
    push_php_json(value, unescaped_unicode, &mut out);
    out
}

pub(super) fn push_php_json(value: &Value, unescaped_unicode: bool, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match php_number(n) {
            PhpNumber::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PhpNumber::Float(f) => push_php_float(f, 'e', out),
        },
        Value::String(s) => push_php_json_string(s, unescaped_unicode, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_php_json(item, unescaped_unicode, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let is_list = map
                .keys()
                .enumerate()
                .all(|(index, key)| php_int_key(key) == i64::try_from(index).ok());
            out.push(if is_list { '[' } else { '{' });
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                if !is_list {
                    push_php_json_string(key, unescaped_unicode, out);
                    out.push(':');
                }
                push_php_json(item, unescaped_unicode, out);
            }
            out.push(if is_list { ']' } else { '}' });
        }
    }
}

/// PHP's `php_json_escape_string` without `JSON_UNESCAPED_SLASHES` and without
/// `JSON_UNESCAPED_LINE_TERMINATORS`.
pub(super) fn push_php_json_string(s: &str, unescaped_unicode: bool, out: &mut String) {
    out.push('"');
    // Runs of characters that need no escaping are copied whole: a job's serialized command is
    // mostly such runs, and this is the hot path of the Laravel sink.
    let mut run = 0;
    for (i, c) in s.char_indices() {
        let plain = match c {
            '"' | '\\' | '/' => false,
            c if u32::from(c) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => false,
            c => c.is_ascii() || unescaped_unicode,
        };
        if plain {
            continue;
        }
        out.push_str(&s[run..i]);
        run = i + c.len_utf8();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_unicode_escape(*unit, out);
                }
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// `\uXXXX`, lowercase hex as PHP writes it.
pub(super) fn push_unicode_escape(unit: u16, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(char::from(HEX[usize::from((unit >> shift) & 0xf)]));
    }
}
