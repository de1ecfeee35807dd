//! `webhook` sink: one HTTP request per message, up to `max_in_flight` at once, keep-alive
//! connections, TLS through rustls.
//!
//! 2xx is delivered. 408, 429, 5xx, connection errors and timeouts are transient (retried by
//! the rule, after at least the `Retry-After` the endpoint asked for); any other status is
//! permanent and the message is dead-lettered at once with the status and the start of the
//! response body. After [`CIRCUIT_THRESHOLD`] requests in a row fail, the circuit opens: each
//! attempt then sends one probe request, and the rest of the batch waits for the next backoff
//! step instead of flooding an endpoint that is down.
//!
//! With a `secret`, each request carries `X-Router-Timestamp: <unix seconds>` and
//! `X-Router-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::SinkError;
use crate::config::WebhookSpec;
use crate::filter::{Missing, now_rfc3339};
use crate::message::Message;

/// Failed requests in a row that open the circuit.
pub const CIRCUIT_THRESHOLD: u32 = 5;
/// How much of an error response body goes into the error (and the dead letter).
const BODY_SNIPPET: usize = 256;
/// Longest `Retry-After` honoured; a larger value is clamped so a rule cannot stall for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Signature header.
pub const SIGNATURE_HEADER: &str = "X-Router-Signature";
/// Timestamp header, part of what is signed.
pub const TIMESTAMP_HEADER: &str = "X-Router-Timestamp";

/// A webhook sink.
pub struct WebhookSink {
    spec: WebhookSpec,
    label: String,
    client: reqwest::Client,
    method: reqwest::Method,
    consecutive_failures: u32,
    /// The last failure the endpoint itself caused, quoted while the circuit is open.
    last_failure: Option<String>,
}

impl WebhookSink {
    /// Build the HTTP client.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new(spec: &WebhookSpec, label: String) -> Result<WebhookSink, SinkError> {
        crate::redis_conn::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(spec.max_in_flight)
            .tcp_nodelay(true)
            .user_agent(concat!("redis-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Http {
                sink: label.clone(),
                status: None,
                detail: format!("cannot build the HTTP client: {e}"),
                retryable: true,
                retry_after: None,
            })?;
        let method = reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        Ok(WebhookSink {
            spec: spec.clone(),
            label,
            client,
            method,
            consecutive_failures: 0,
            last_failure: None,
        })
    }

    /// The sink's `name`, or `webhook https://…` with its secrets masked.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the circuit is open (the endpoint failed [`CIRCUIT_THRESHOLD`] times in a row).
    pub fn circuit_open(&self) -> bool {
        self.consecutive_failures >= CIRCUIT_THRESHOLD
    }

    /// Send a batch, `max_in_flight` requests at a time; one result per message.
    pub async fn send(&mut self, batch: &[&Message]) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Option<Result<(), SinkError>>> = (0..batch.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..batch.len()).collect();
        if self.circuit_open() && !batch.is_empty() {
            let probe = self.request(batch[0]).await;
            let failed = probe.as_ref().is_err_and(SinkError::is_retryable);
            self.record(&probe);
            if failed {
                let retry_after = probe.as_ref().err().and_then(SinkError::retry_after);
                let detail = format!(
                    "circuit open after {} failed requests in a row, not sent; last: {}",
                    self.consecutive_failures,
                    self.last_failure.as_deref().unwrap_or("?")
                );
                results[0] = Some(probe);
                for r in results.iter_mut().skip(1) {
                    *r = Some(Err(SinkError::Http {
                        sink: self.label.clone(),
                        status: None,
                        detail: detail.clone(),
                        retryable: true,
                        retry_after,
                    }));
                }
                return results.into_iter().flatten().collect();
            }
            results[0] = Some(probe);
            todo.remove(0);
        }
        let this = &*self;
        let outcomes: Vec<(usize, Result<(), SinkError>)> = futures_util::stream::iter(todo)
            .map(|i| async move { (i, this.request(batch[i]).await) })
            .buffer_unordered(self.spec.max_in_flight)
            .collect()
            .await;
        for (i, outcome) in outcomes {
            self.record(&outcome);
            results[i] = Some(outcome);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(self.internal("request result missing"))))
            .collect()
    }

    fn internal(&self, detail: &str) -> SinkError {
        SinkError::Http {
            sink: self.label.clone(),
            status: None,
            detail: detail.to_string(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A success (or a permanent refusal, which says the endpoint is up) closes the circuit;
    /// a transient failure counts towards opening it.
    fn record(&mut self, outcome: &Result<(), SinkError>) {
        match outcome {
            Err(e) if e.is_retryable() => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if let SinkError::Http { detail, .. } = e {
                    self.last_failure = Some(detail.clone());
                }
            }
            _ => self.consecutive_failures = 0,
        }
    }

    /// The URL and body this sink sends for `msg`.
    ///
    /// # Errors
    /// When the URL or body template cannot be rendered.
    pub fn render(spec: &WebhookSpec, msg: &Message) -> Result<(String, Vec<u8>), crate::filter::EvalError> {
        let url = spec.url.render_string(msg, Missing::Error)?;
        let body = match &spec.body {
            Some(t) => t.render(msg, Missing::Empty)?,
            None => msg.raw().to_vec(),
        };
        Ok((url, body))
    }

    async fn request(&self, msg: &Message) -> Result<(), SinkError> {
        let (url, body) = Self::render(&self.spec, msg).map_err(|source| SinkError::Render {
            sink: self.label.clone(),
            source,
        })?;
        let mut req = self.client.request(self.method.clone(), &url);
        // A `Content-Type` among the rule's headers is the operator's word; else the body says.
        if !self
            .spec
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header(reqwest::header::CONTENT_TYPE, content_type(&body));
        }
        for (k, v) in &self.spec.headers {
            req = req.header(k, v);
        }
        if let Some(secret) = &self.spec.secret {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            req = req
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, format!("v1={}", sign(secret.as_bytes(), ts, &body)));
        }
        let http_err =
            |status: Option<u16>, detail: String, retryable: bool, retry_after: Option<Duration>| SinkError::Http {
                sink: self.label.clone(),
                status,
                detail,
                retryable,
                retry_after,
            };
        let response = req.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            // reqwest's text names the URL, token and all; the sink's label says which
            // endpoint it was.
            http_err(None, format!("{what}: {}", error_chain(&e.without_url())), true, None)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let code = status.as_u16();
        let retryable = code == 408 || code == 429 || status.is_server_error();
        let text = response.bytes().await.unwrap_or_default();
        // The endpoint's words, escaped and with any URL in them masked: they go into logs,
        // `/status` and the dead letter.
        let snippet = crate::mask::text(&String::from_utf8_lossy(&text[..text.len().min(BODY_SNIPPET)]));
        Err(http_err(
            Some(code),
            format!("HTTP {code} at {}: {snippet}", now_rfc3339()),
            retryable,
            retry_after,
        ))
    }
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`: what a receiver recomputes to verify.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this branch cannot be reached.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// An error and its causes (`error sending request: client error (Connect): tcp connect
/// error: Connection refused`), masked: the causes come from hyper and the OS, not from us.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    crate::mask::text(&text)
}

/// `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The media type of a body: JSON when it is JSON (a payload routed as it came, a rendered
/// `{{$.data}}`), plain text for other UTF-8 (`order {{$.id}} paid`), bytes otherwise.
fn content_type(body: &[u8]) -> &'static str {
    let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
        // Deeper than the parser's nesting limit: a document that opens as one is taken as one.
        || matches!(body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['));
    if json {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Computed independently: python3 -c "import hmac,hashlib; print(hmac.new(b's3cret',
        // b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(b"s3cret", 1700000000, br#"{"a":1}"#),
            "1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
