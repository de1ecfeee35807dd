//! What of a URL or a text may leave the process: one place that masks secrets and escapes
//! control characters, used by every output (logs, `/status`, `/metrics`, `check`, `test`,
//! `dlq`, dead letters, error messages).
//!
//! - [`url`]: a connection or webhook URL with its password, query values, fragment and any
//!   path that may carry a token (Slack's `/services/T/B/X`, Teams', Discord's) replaced by
//!   `***`, parsed by the `url` crate.
//! - [`text`]: free text (an error, a response body) with every URL in it masked as [`url`]
//!   does and control characters escaped.
//! - [`escape`]: control and bidirectional-override characters written as `\n`, `\u{1b}`, so
//!   that a payload cannot clear a terminal or rewrite a log line.
//!
//! It imports nothing of this crate, so every module can use it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// What a masked part of a URL is shown as.
pub const MASK: &str = "***";

/// Query keys whose values a Redis URL may show (they select, they do not authenticate).
const SHOWN_REDIS_QUERY: &[&str] = &["protocol", "db"];

/// Longest path segment of an HTTP URL that is shown (a token is longer, or has digits).
const MAX_SHOWN_SEGMENT: usize = 20;

/// `url` with every secret it may hold replaced by `***`, control characters escaped.
///
/// - userinfo: `user:***@` (a user alone may be a token: `***@`). In a Redis URL everything up
///   to the last `@` is userinfo, because a password written raw may hold `/ ? #`, which a URL
///   parser takes for the path (such a URL does not parse, and `check` says so; its masked
///   form must still hide the password). In an HTTP URL the userinfo ends at the first
///   `/ ? #`, since a path may hold `@` (Teams webhook URLs do), unless a `:` comes before
///   that `/` and an `@` after it (`https://u:pa/ss@host`).
/// - query: every value of an HTTP URL (`?token=***`); of a Redis URL, all but `protocol`
///   and `db` (`?pass=***`).
/// - path of an HTTP URL: shown up to the first segment that is not a plain lower-case word
///   (letters, at most two digits, `- _ . ~`, up to 20 characters) or a whole `{{…}}`
///   template; from there on `/***`. So `https://hooks.slack.com/services/T0/B0/XYZ` shows as
///   `https://hooks.slack.com/services/***`, `https://billing.internal/hooks/orders` whole.
/// - fragment: `#insecure` (a redis-rs option) is shown, any other `#***`.
///
/// Text that is not a `scheme://` URL is only escaped.
pub fn url(text: &str) -> String {
    let Some(sep) = text.find("://") else {
        return escape(text).into_owned();
    };
    let scheme = &text[..sep];
    if scheme.is_empty() || !scheme.chars().all(is_scheme_char) {
        return escape(text).into_owned();
    }
    let rest = &text[sep + 3..];
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let mut authority_end = if http {
        rest.find(['/', '?', '#']).unwrap_or(rest.len())
    } else {
        rest.len()
    };
    // `https://user:pa/ss@host`: a `:` before the first `/` and an `@` after it is a password
    // holding `/` (a Teams path holds `@`, but its authority has no `:`).
    if http && rest[..authority_end].contains(':') && rest[authority_end..].contains('@') {
        authority_end = rest.len();
    }
    let (userinfo, after) = match rest[..authority_end].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&escape(scheme));
    out.push_str("://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                let _ = write!(out, "{}:{MASK}@", escape(user));
            }
            None => {
                let _ = write!(out, "{MASK}@");
            }
        }
    }
    let probe = format!("{scheme}://{after}");
    match ::url::Url::parse(&probe) {
        Ok(u) => {
            if let Some(host) = u.host_str() {
                out.push_str(&escape(host));
            }
            if let Some(port) = u.port() {
                let _ = write!(out, ":{port}");
            }
            if http {
                // The parser writes an empty HTTP path as `/`; show the URL as it was written.
                if after.contains('/') || u.path() != "/" {
                    out.push_str(&http_path(&u));
                }
            } else {
                out.push_str(&escape(u.path()));
            }
            if let Some(query) = u.query() {
                out.push('?');
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((k, v)) if !http && SHOWN_REDIS_QUERY.contains(&k) => format!("{k}={v}"),
                        Some((k, _)) => format!("{k}={MASK}"),
                        None if http => MASK.to_string(),
                        None => pair.to_string(),
                    })
                    .collect();
                out.push_str(&escape(&pairs.join("&")));
            }
            match u.fragment() {
                Some("insecure") => out.push_str("#insecure"),
                Some(_) => {
                    let _ = write!(out, "#{MASK}");
                }
                None => {}
            }
        }
        // A host that is a template (`https://{{$.host}}/x`) or otherwise not a host: show
        // the authority as written and hide whatever follows it.
        Err(_) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            out.push_str(&escape(&after[..end]));
            if end < after.len() {
                let _ = write!(out, "/{MASK}");
            }
        }
    }
    out
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// The path of an HTTP URL, shown up to the first segment that may be a token.
fn http_path(u: &::url::Url) -> String {
    let Some(segments) = u.path_segments() else {
        return escape(u.path()).into_owned();
    };
    let mut out = String::new();
    for segment in segments {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if !plain_segment(&decoded) {
            let _ = write!(out, "/{MASK}");
            return out;
        }
        out.push('/');
        out.push_str(&escape(&decoded));
    }
    out
}

/// A path segment that cannot be a token: empty, a whole `{{…}}` template (rendered from the
/// message, not a secret of the file), or a short lower-case word with at most two digits
/// (`hooks`, `v1`, `webhookb2`, `incoming-webhook`).
fn plain_segment(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    if s.starts_with("{{") && s.ends_with("}}") && s.matches("{{").count() == 1 {
        return true;
    }
    s.len() <= MAX_SHOWN_SEGMENT
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '~'))
        && s.chars().filter(char::is_ascii_digit).count() <= 2
}

/// Free text with every `scheme://…` URL in it masked as [`url`] masks it, and control
/// characters escaped. A URL ends at white space, a quote (typographic ones too), `<`, `>` or
/// a control character;
/// trailing `. , ; : ) ]` are taken for punctuation.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The scheme: the ASCII letters, digits and `+ - .` just before `://`, found by
        // characters (not bytes), so a multi-byte character before it is never cut.
        let start = rest[..pos]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_scheme_char(c))
            .last()
            .map_or(pos, |(i, _)| i);
        let end = rest[pos..]
            .find(|c: char| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '"' | '\'' | '<' | '>' | '`' | '“' | '”' | '‘' | '’' | '«' | '»')
            })
            .map_or(rest.len(), |i| pos + i);
        let token = &rest[start..end];
        let trimmed = token.trim_end_matches(['.', ',', ';', ':', ')', ']']);
        out.push_str(&escape(&rest[..start]));
        if start == pos {
            // `://` with no scheme: not a URL; keep it and go on after it.
            out.push_str("://");
            rest = &rest[pos + 3..];
            continue;
        }
        out.push_str(&url(trimmed));
        out.push_str(&escape(&token[trimmed.len()..]));
        rest = &rest[end..];
    }
    out.push_str(&escape(rest));
    out
}

/// The first `chars` characters of `bytes` as text (bytes that are not UTF-8 replaced), read
/// from its first bytes only, as a payload may be megabytes; `…` marks what was cut.
pub fn head(bytes: &[u8], chars: usize) -> String {
    let start = String::from_utf8_lossy(&bytes[..bytes.len().min(chars * 4)]);
    let mut short: String = start.chars().take(chars).collect();
    if short.len() < bytes.len() {
        short.push('…');
    }
    short
}

/// `text` with control characters (C0, DEL, C1) and the bidirectional overrides that can
/// reorder what a terminal shows written as escapes (`\n`, `\t`, `\u{1b}`, `\u{202e}`);
/// everything else, `“` included, as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                _ => {
                    let _ = write!(out, "{}", c.escape_unicode());
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        let cases = [
            ("redis://u:secret@h:6379/0", "redis://u:***@h:6379/0"),
            ("redis://:secret@h", "redis://:***@h"),
            ("rediss://secret@h", "rediss://***@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("unix:///tmp/x", "unix:///tmp/x"),
            (
                "redis+unix:///tmp/x.sock?db=2&pass=pw",
                "redis+unix:///tmp/x.sock?db=2&pass=***",
            ),
            ("rediss://:pw@h:6380/0#insecure", "rediss://:***@h:6380/0#insecure"),
            ("redis://h/0?protocol=resp3", "redis://h/0?protocol=resp3"),
        ];
        for (url, want) in cases {
            assert_eq!(super::url(url), want, "{url}");
        }
    }

    /// Every character a password may hold, raw or percent-encoded: never shown.
    #[test]
    fn passwords_with_every_special_character() {
        for c in ["/", "@", "#", "?", "%", ":", "+", "%2F", "%40", "“"] {
            let pw = format!("se{c}cr{c}et");
            for url in [
                format!("redis://:{pw}@127.0.0.1:6379/0"),
                format!("redis://user:{pw}@127.0.0.1:6379"),
                format!("rediss://{pw}@h:6380"),
                format!("redis://user:{pw}@h"),
            ] {
                let shown = super::url(&url);
                assert!(!shown.contains("cr"), "{url} -> {shown}");
                assert!(shown.contains("@127.0.0.1") || shown.contains("@h"), "{url} -> {shown}");
                // In free text a URL ends at a quote or white space, so a password holding
                // one cannot be told from the text around it; the others are masked.
                if c != "“" {
                    let in_text = text(&format!("connect to “{url}” failed"));
                    assert!(!in_text.contains("cr"), "{url} -> {in_text}");
                }
            }
        }
    }

    #[test]
    fn webhook_urls() {
        let cases = [
            (
                "https://hooks.slack.com/services/T024BE7LD/B01234567/abcdEFGHijklMNOPqrstUVWX",
                "https://hooks.slack.com/services/***",
            ),
            (
                "https://acme.webhook.office.com/webhookb2/0f3c1a2b-1111-2222-3333-444455556666@0f3c1a2b-aaaa-bbbb-cccc-ddddeeeeffff/IncomingWebhook/9f8e7d6c5b4a/0f3c1a2b-1234",
                "https://acme.webhook.office.com/webhookb2/***",
            ),
            (
                "https://discord.com/api/webhooks/123456789012345678/AbCdEf-gHiJkL",
                "https://discord.com/api/webhooks/***",
            ),
            (
                "https://billing.internal/hooks/orders",
                "https://billing.internal/hooks/orders",
            ),
            (
                "http://127.0.0.1:8080/v1/h?token=s3cr3t&x",
                "http://127.0.0.1:8080/v1/h?token=***&***",
            ),
            ("https://tok3n@api.example/x", "https://***@api.example/x"),
            ("https://u:p/w@api.example/x", "https://u:***@api.example/x"),
            ("https://x.example/orders/{{$.id}}", "https://x.example/orders/{{$.id}}"),
            ("https://{{$.host}}/a/T0123ABC/x", "https://{{$.host}}/a/***"),
            ("https://x.example/a#frag", "https://x.example/a#***"),
            ("http://x", "http://x"),
            ("http://x/", "http://x/"),
        ];
        for (url, want) in cases {
            assert_eq!(super::url(url), want, "{url}");
        }
    }

    #[test]
    fn free_text_never_panics_on_multibyte_characters_and_masks_each_url() {
        assert_eq!(
            text("connect to redis://app:hunter2@db:6379/0 failed (rediss://:pw@x)"),
            "connect to redis://app:***@db:6379/0 failed (rediss://:***@x)"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(
            text("bad “http://h/hooks?token=abc” é"),
            "bad “http://h/hooks?token=***” é"
        );
        assert_eq!(text("“://x"), "“://x");
        assert_eq!(text("é://x ://"), "é://x ://");
        assert_eq!(text("line\nnext\u{1b}[2J"), "line\\nnext\\u{1b}[2J");
        // Every cut of a text with multi-byte characters around URLs.
        let s = "“https://u:pw@h/a?t=1” ↯redis://:p@h “";
        for (i, _) in s.char_indices() {
            let _ = text(&s[i..]);
            let _ = text(&s[..i]);
        }
    }

    #[test]
    fn escapes_controls_and_bidi_overrides_only() {
        assert_eq!(
            escape("a\tb\r\n\u{7f}\u{9b}\u{202e}“ok”"),
            "a\\tb\\r\\n\\u{7f}\\u{9b}\\u{202e}“ok”"
        );
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }
}
