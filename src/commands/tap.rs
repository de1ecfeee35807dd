//! `redis-router tap`: what a running router's rules do with each message, live, read from its
//! HTTP endpoint's `/tap` (see [`crate::tap`]).

use std::io::Write;

use serde_json::Value;

use crate::config::HttpSpec;

/// Longest line accepted from `/tap`.
const MAX_LINE: usize = 1 << 20;

/// What to watch (the command line of `redis-router tap`).
#[derive(clap::Args)]
pub struct TapOptions {
    /// Only these rules.
    #[arg(value_name = "RULE")]
    pub rules: Vec<String>,
    /// Only these stages: received, filtered, sink, dead-letter (repeatable).
    #[arg(long = "stage", value_parser = ["received", "filtered", "sink", "dead-letter"])]
    pub stages: Vec<String>,
    /// Only messages this expression keeps, written as a rule's `filter:`.
    #[arg(long)]
    pub filter: Option<String>,
    /// Stop after N events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// JSON lines instead of readable ones.
    #[arg(long)]
    pub json: bool,
    /// The router's HTTP endpoint, when not the file's `http.listen` (`run --listen`).
    #[arg(long)]
    pub url: Option<String>,
}

/// Why a tap could not run.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Nowhere to connect.
    #[error("the rule file has no `http: {{ listen: ..., tap: true }}`; add it, or give `--url`")]
    NoEndpoint,
    /// The router refused or is not there.
    #[error("{0}")]
    Refused(String),
    /// Writing the output failed (a closed pipe ends the tap quietly).
    #[error("{0}")]
    Output(#[from] std::io::Error),
}

/// Tap the router whose rule file has `http` until the limit, the router's shutdown, or an interrupt.
/// Returns the number of events printed.
///
/// # Errors
/// [`TapError`] when the endpoint cannot be reached or refuses.
pub async fn run(http: Option<&HttpSpec>, options: &TapOptions, out: &mut dyn Write) -> Result<u64, TapError> {
    let base = match (&options.url, http) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(http)) => format!("http://{}", http.listen),
        (None, None) => return Err(TapError::NoEndpoint),
    };
    let mut query: Vec<(&str, &str)> = Vec::new();
    query.extend(options.rules.iter().map(|r| ("rule", r.as_str())));
    query.extend(options.stages.iter().map(|s| ("stage", s.as_str())));
    if let Some(f) = &options.filter {
        query.push(("filter", f));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| TapError::Refused(e.to_string()))?;
    let mut url = url::Url::parse(&format!("{base}/tap"))
        .map_err(|e| TapError::Refused(format!("`{}` is not a URL: {e}", crate::mask::url(&base))))?;
    url.query_pairs_mut().extend_pairs(&query);
    let mut request = client.get(url);
    if let Some(token) = http.and_then(|h| h.tap_token.as_ref()) {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(|e| {
        TapError::Refused(format!(
            "cannot reach the router at {}: {}",
            crate::mask::url(&base),
            e.without_url()
        ))
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(TapError::Refused(format!(
            "the router answered {status}: {}",
            crate::mask::text(text.trim())
        )));
    }
    eprintln!(
        "Tapping {} (rules: {}; stages: {}). Ctrl-C stops.",
        crate::mask::url(&base),
        if options.rules.is_empty() {
            "all".into()
        } else {
            options.rules.join(", ")
        },
        if options.stages.is_empty() {
            "all".into()
        } else {
            options.stages.join(", ")
        },
    );
    let mut printed = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            // The router stopped (or the connection went): the tap ends.
            Ok(None) | Err(_) => return Ok(printed),
        };
        pending.extend_from_slice(&chunk);
        // An event line is a few tens of KiB at most (see `crate::tap::PREVIEW_BYTES`); what
        // says otherwise is not a router's `/tap`, and is not buffered without end.
        if pending.len() > MAX_LINE && !pending.contains(&b'\n') {
            return Err(TapError::Refused(format!(
                "{} sent a line longer than {MAX_LINE} bytes; not a redis-router /tap",
                crate::mask::url(&base)
            )));
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            let Ok(value) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let is_event = value.get("stage").is_some();
            if options.json {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", readable(&value))?;
            }
            out.flush()?;
            if is_event {
                printed += 1;
                if options.limit.is_some_and(|l| printed >= l) {
                    return Ok(printed);
                }
            }
        }
    }
}

/// One event as a line a person reads: time, rule, stage, where from, then what the stage says.
pub fn readable(v: &Value) -> String {
    use crate::mask::escape;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    if let Some(n) = v.get("lagged").and_then(Value::as_u64) {
        return format!("… {n} events lost: this tap read too slowly");
    }
    let mut line = String::new();
    if let Some(n) = v.get("skipped").and_then(Value::as_u64) {
        line.push_str(&format!(
            "… {n} events not shown (more than {}/s)\n",
            crate::tap::MAX_EVENTS_PER_SEC
        ));
    }
    let from = match v.get("id").and_then(Value::as_str) {
        Some(id) => format!("{} {}", escape(s("key")), escape(id)),
        None => escape(s("key")).into_owned(),
    };
    line.push_str(&format!("{} {} {:<11} {from}", s("at"), escape(s("rule")), s("stage")));
    match s("stage") {
        "sink" => line.push_str(&format!(" -> {}: {}", escape(s("sink")), escape(s("command")))),
        "filtered" => line.push_str(&format!(" ({}) payload={}", escape(s("reason")), escape(s("payload")))),
        "dead-letter" => {
            if !s("sink").is_empty() {
                line.push_str(&format!(" sink=\"{}\"", escape(s("sink"))));
            }
            line.push_str(&format!(
                " reason=\"{}\" payload={}",
                escape(s("reason")),
                escape(s("payload"))
            ));
        }
        _ => line.push_str(&format!(" payload={}", escape(s("payload")))),
    }
    line
}
