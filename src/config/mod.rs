//! Loading the rule file: read, parse, validate, and report every mistake with its position.
//!
//! `raw.rs` mirrors the YAML, `validate.rs` turns it into the [`RuleSet`] of `spec.rs`, `env.rs`
//! expands `${VAR}`. This module owns reading the file (bounded, never blocking on a special
//! file), the parser's budget, the error type, and the recovery that lets one run report a
//! broken key in several rules at once (serde stops at the first).

mod env;
mod node;
mod raw;
mod repair;
mod spec;
mod validate;

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use env::expand as expand_env;
pub use node::{At, position_of};
pub use spec::*;

use raw::{RawFile, RawFileOutline, RawRule};

/// One mistake in a rule file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// The rule it is in, when it is in one.
    pub rule: Option<String>,
    /// What is wrong, and what to write instead where that helps.
    pub message: String,
}

impl Diagnostic {
    /// Format as `FILE:LINE:COL: rule "NAME": message`.
    pub fn render(&self, file: &str) -> String {
        let mut out = self.position(file);
        out.push_str(&self.message);
        out
    }

    /// Format a warning as `FILE:LINE:COL: rule "NAME": warning: message`.
    pub fn render_warning(&self, file: &str) -> String {
        format!("{}warning: {}", self.position(file), self.message)
    }

    fn position(&self, file: &str) -> String {
        let mut out = format!("{file}:{}:{}: ", self.line, self.column);
        if let Some(rule) = &self.rule {
            out.push_str(&format!("rule \"{rule}\": "));
        }
        out
    }
}

/// The most a rule file may hold: 8 MiB. Ten thousand rules of a few lines each take about
/// 1.4 MB; the limit bounds the memory and time a file can cost (the parse of a file at the
/// limit takes well under a second and a few hundred MB at worst), so that a 50 MB file, a
/// device that never ends or a file that keeps growing is refused instead of read.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Why a rule file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A FIFO, a directory, a socket or a device where the file should be: reading it could
    /// wait for a writer forever or never end, so it is not read at all.
    #[error(
        "cannot read {path}: it is {kind}, not a regular file (a rule file must be a regular file or a symlink to one)"
    )]
    NotAFile {
        /// The file, as given.
        path: String,
        /// What it is instead ("a FIFO").
        kind: &'static str,
    },
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("cannot read {path}: it holds {size} bytes, more than the {} MiB a rule file may hold", MAX_FILE_BYTES >> 20)]
    TooLarge {
        /// The file, as given.
        path: String,
        /// Its size when it was refused (at least this much, for a file that grew while read).
        size: u64,
    },
    /// The file has mistakes; every one is listed.
    #[error("{}", render_all(file, diagnostics))]
    Invalid {
        /// The file, as given.
        file: String,
        /// Every mistake, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render_all(file: &str, diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.render(file))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The diagnostics, empty for I/O errors.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
            ConfigError::Io { .. } | ConfigError::NotAFile { .. } | ConfigError::TooLarge { .. } => &[],
        }
    }
}

/// Read and validate a rule file.
///
/// # Errors
/// As [`read`], and [`ConfigError::Invalid`] with every mistake.
pub fn load(path: &Path) -> Result<RuleSet, ConfigError> {
    let text = read(path)?;
    load_str(&text, &path.display().to_string())
}

/// Only the `http:` section of the rule file at `path`: what `redis-router tap` needs, without
/// the environment the rules' connections need.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read, or its top level or `http:` is wrong.
pub fn load_http(path: &Path) -> Result<Option<HttpSpec>, ConfigError> {
    let text = read(path)?;
    let file = path.display().to_string();
    let invalid = |diagnostics: Vec<Diagnostic>| ConfigError::Invalid {
        file: file.clone(),
        diagnostics,
    };
    let outline = parse::<RawFileOutline>(&text).map_err(|e| invalid(vec![from_serde(&e, None)]))?;
    let lookup = |name: &str| std::env::var(name).ok();
    validate::http_only(outline.http.as_ref(), &lookup).map_err(invalid)
}

/// Read a rule file's text, refusing anything that could block or take unbounded time or
/// memory: only a regular file (or a symlink to one) of at most [`MAX_FILE_BYTES`] is read.
///
/// The file is opened with `O_NONBLOCK`, so that a FIFO swapped in between the check and the
/// open cannot make the open wait for a writer, and what was opened is checked again (fstat)
/// before a byte is read. At most one byte more than the limit is read, so a file that grows
/// while it is read costs no more than the limit. This is blocking file I/O: async callers run
/// it on the blocking pool.
///
/// # Errors
/// [`ConfigError::NotAFile`] for a FIFO, directory, socket or device; [`ConfigError::TooLarge`];
/// [`ConfigError::Io`] when it cannot be opened or read; [`ConfigError::Invalid`] (with the line
/// and column of the first bad byte) when it is not UTF-8.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    let name = || path.display().to_string();
    let io = |source| ConfigError::Io { path: name(), source };
    // stat first: a socket cannot be opened at all, and a clear "it is a FIFO" beats what
    // open() would say.
    check_regular(&std::fs::metadata(path).map_err(io)?, path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let opened = file.metadata().map_err(io)?;
    check_regular(&opened, path)?;
    let too_large = |size: u64| ConfigError::TooLarge { path: name(), size };
    if opened.len() > MAX_FILE_BYTES {
        return Err(too_large(opened.len()));
    }
    // Capacity from the size as opened (bounded above); a file that grows reallocates, up to
    // the limit and one byte.
    let mut bytes = Vec::with_capacity(opened.len() as usize);
    (&file).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let now = file.metadata().map(|m| m.len()).unwrap_or(0);
        return Err(too_large(now.max(bytes.len() as u64)));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..]).chars().count() as u64 + 1;
        let byte = e.as_bytes().get(valid.len()).copied().unwrap_or(0);
        ConfigError::Invalid {
            file: name(),
            diagnostics: vec![Diagnostic {
                line,
                column,
                rule: None,
                message: format!("not UTF-8 text (byte 0x{byte:02X}); save the file as UTF-8"),
            }],
        }
    })
}

/// Refuse anything but a regular file, naming what it is.
fn check_regular(meta: &std::fs::Metadata, path: &Path) -> Result<(), ConfigError> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    Err(ConfigError::NotAFile {
        path: path.display().to_string(),
        kind,
    })
}

/// Validate rule-file text; `file` names it in errors. Environment variables come from the
/// process environment.
///
/// # Errors
/// [`ConfigError::Invalid`] with every mistake found.
pub fn load_str(text: &str, file: &str) -> Result<RuleSet, ConfigError> {
    let lookup = |name: &str| std::env::var(name).ok();
    load_str_with_env(text, file, &lookup)
}

/// As [`load_str`], with environment lookups answered by `env`.
///
/// # Errors
/// [`ConfigError::Invalid`] with every mistake found.
pub fn load_str_with_env(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RuleSet, ConfigError> {
    let invalid = |mut diagnostics: Vec<Diagnostic>| {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        diagnostics.dedup();
        ConfigError::Invalid {
            file: file.to_string(),
            diagnostics,
        }
    };
    match parse::<RawFile>(text) {
        Ok(raw) => validate::validate(raw, env).map_err(invalid),
        Err(first) => Err(invalid(recover(text, first, env))),
    }
}

/// Most YAML values (mappings, lists, scalars) a file may hold or expand to. Ten thousand
/// rules with filters, transforms and test cases hold a few hundred thousand; serde-saphyr's
/// default (250,000) would refuse them.
const MAX_YAML_VALUES: usize = 1_000_000;

/// Most values aliases (`*name`) may repeat in all. A file uses aliases to share a connection
/// or a sink between rules, a few values each; nine levels of nine aliases (a "billion laughs")
/// would repeat 387 million, and are refused here after a fraction of a second.
const MAX_ALIAS_VALUES: usize = 100_000;

/// Parse YAML under the limits above, the serde-saphyr defaults for nesting (64 levels of
/// block, 255 of flow collections) and documents, and at most twice [`MAX_FILE_BYTES`] of
/// scalar text (aliases of a long string multiply text, not values). What a file can cost to
/// parse is bounded by these, whatever it holds.
fn parse<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        // YAML 1.2: only `true` and `false` are booleans. A `tests:` case read as untyped
        // data then sees `stream: y` as the text `y`, as the sink above it does.
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_YAML_VALUES,
            max_events: 2 * MAX_YAML_VALUES,
            max_total_scalar_bytes: 2 * MAX_FILE_BYTES as usize,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_VALUES,
        },
    };
    serde_saphyr::from_str_with_options(text, options)
}

/// serde stops at the first structural mistake. To report more than one, parse the file again
/// with the rules left unread, then each rule's lines on their own to learn which do not parse
/// (their errors shifted to the rule's place in the file), then the file once more with those
/// rules blanked out (their lines kept, empty, so that every position stays true), and validate
/// what that gives.
///
/// Each step costs time in proportion to the file, never to the square of it: a rule is never
/// parsed behind padding that stands for the lines above it.
fn recover(text: &str, first: serde_saphyr::Error, env: &dyn Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    let first_diag = from_serde(&first, None);
    let outline = match parse::<RawFileOutline>(text) {
        Ok(outline) => outline,
        // YAML that does not parse at all, or a broken top-level key: nothing more to learn.
        Err(e) => {
            let d = from_serde(&e, None);
            return if d == first_diag { vec![d] } else { vec![d, first_diag] };
        }
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut reparse_budget = text.len().saturating_mul(repair::REPARSE_BYTES_PER_FILE_BYTE);
    // Renames in repaired rules, by line of the file: what validation reports on those lines
    // is moved back to where the user wrote it.
    let mut shifts: Vec<repair::Shift> = Vec::new();
    let starts: Vec<u64> = outline.rules.iter().map(|r| r.referenced.line()).collect();
    let mut diagnostics = Vec::new();
    // Every rule's name with its position, in file order, and whether the rule parsed: a rule
    // that does not parse still counts for duplicate names (validation sees only the others).
    let mut names: Vec<(String, u64, u64, bool)> = Vec::new();
    let mut broken: Vec<(usize, usize)> = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let Some((first_line, slice)) = rule_lines(&lines, start, starts.get(i + 1).copied()) else {
            return vec![first_diag];
        };
        let shift = first_line - 1;
        // serde reads in file order: the rules wholly before its first error parsed.
        let end = first_line + slice.split('\n').count() as u64;
        if end <= first_diag.line {
            continue;
        }
        match parse::<Vec<RawRule>>(&slice) {
            Ok(rules) if rules.len() == 1 => continue,
            Ok(_) => return vec![first_diag],
            Err(e) => {
                let name = parse::<Vec<NameOnly>>(&slice)
                    .ok()
                    .and_then(|v| v.into_iter().next())
                    .and_then(|n| n.name);
                let (mistakes, repaired) =
                    repair_rule(&slice, e, name.as_ref().map(|n| n.value.clone()), &mut reparse_budget);
                diagnostics.extend(mistakes.into_iter().map(|mut d| {
                    if d.line > 0 {
                        d.line += shift;
                    }
                    d
                }));
                match repaired {
                    // Validated with the rest: its other mistakes are reported too.
                    Some((fixed, renames)) => {
                        for (line, text) in lines.iter_mut().skip(shift as usize).zip(fixed) {
                            *line = text;
                        }
                        shifts.extend(renames.into_iter().map(|r| repair::Shift {
                            line: r.line + shift as usize,
                            ..r
                        }));
                    }
                    None => {
                        if let Some(n) = name {
                            names.push((n.value, n.referenced.line() + shift, n.referenced.column(), false));
                        }
                        broken.push((shift as usize, slice.split('\n').count()));
                    }
                }
            }
        }
    }
    for &(from, count) in &broken {
        for line in lines.iter_mut().skip(from).take(count) {
            line.clear();
        }
    }
    let good_rules = if broken.len() == starts.len() {
        // Nothing left to parse (and `rules:` with nothing under it would read as null).
        Vec::new()
    } else {
        match parse::<RawFile>(&lines.join("\n")) {
            Ok(rest) => rest.rules,
            // Should not happen (each remaining rule parsed on its own); say what is known.
            Err(_) => {
                diagnostics.push(first_diag);
                return diagnostics;
            }
        }
    };
    for rule in &good_rules {
        let name = &rule.value.name;
        names.push((
            name.value.clone(),
            name.referenced.line(),
            name.referenced.column(),
            true,
        ));
    }
    names.sort_by_key(|(_, line, column, _)| (*line, *column));
    let mut first_seen: std::collections::HashMap<&str, (u64, bool)> = std::collections::HashMap::new();
    for (name, line, column, parsed) in &names {
        match first_seen.get(name.as_str()) {
            // Two rules that parsed: validation reports it.
            Some((_, true)) if *parsed => {}
            Some((first, _)) => diagnostics.push(Diagnostic {
                line: *line,
                column: *column,
                rule: Some(name.clone()),
                message: format!("duplicate rule name (first used on line {first}); give each rule its own name"),
            }),
            None => {
                first_seen.insert(name, (*line, *parsed));
            }
        }
    }
    let partial = RawFile {
        connections: outline.connections,
        http: outline.http,
        limits: outline.limits,
        rules: good_rules,
    };
    if let Err(more) = validate::validate(partial, env) {
        diagnostics.extend(more.into_iter().map(|mut d| {
            d.column = repair::original_column(&shifts, d.line as usize, d.column as usize) as u64;
            d
        }));
    }
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostics.is_empty() {
        diagnostics.push(first_diag);
    }
    diagnostics
}

/// A rule's lines after repairs, and the renames among them.
type Repaired = (Vec<String>, Vec<repair::Shift>);

/// The mistakes of a rule that does not parse, past serde's first: the rule is repaired one
/// mistake at a time (see [`repair`]) and parsed again. Returns them (lines relative to the
/// rule's lines) and, when the repairs made it parse, the repaired lines and their renames.
fn repair_rule(
    slice: &str,
    first: serde_saphyr::Error,
    rule: Option<String>,
    budget: &mut usize,
) -> (Vec<Diagnostic>, Option<Repaired>) {
    let mut lines: Vec<String> = slice.split('\n').map(str::to_string).collect();
    let mut renames: Vec<repair::Shift> = Vec::new();
    let mut mistakes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut error = first;
    for step in 0..repair::MAX_STEPS_PER_RULE {
        let mut d = from_serde(&error, rule.clone());
        let (line, column) = (d.line as usize, d.column as usize);
        // A missing key after a repair is the repair's doing; the same place twice, a repair
        // that did not take.
        if (step > 0 && d.message.starts_with("missing field")) || !seen.insert((line, column)) {
            break;
        }
        if line > 0 {
            d.column = repair::original_column(&renames, line, column) as u64;
        }
        if let Some(text) = lines.get(line.wrapping_sub(1)) {
            d.message = name_the_entry(&d.message, text, column);
        }
        let rename = misspelt(&error);
        let missing = d.message.starts_with("missing field");
        mistakes.push(d);
        if line == 0 || missing || *budget < slice.len() {
            break;
        }
        *budget -= slice.len();
        let edited = match rename {
            // Renamed, so its value is checked too, unless that key is written as well.
            Some((from, to)) if !lines.iter().any(|l| l.contains(&format!("{to}:"))) => {
                repair::rename(&mut lines, line - 1, column, &from, &to).map(|s| renames.push(s))
            }
            _ => repair::blank_entry(&mut lines, line - 1, column),
        };
        if edited.is_none() {
            break;
        }
        match parse::<Vec<RawRule>>(&lines.join("\n")) {
            Ok(rules) if rules.len() == 1 => return (mistakes, Some((lines, renames))),
            Ok(_) => break,
            Err(e) => error = e,
        }
    }
    (mistakes, None)
}

/// serde's words for a value of the wrong type (`invalid u32`) name neither the key nor the
/// value; the line does. `attempts: -1` → "`attempts: -1`: must be a whole number, 0 or more".
fn name_the_entry(message: &str, line: &str, column: usize) -> String {
    let whole = [
        "invalid u8",
        "invalid u16",
        "invalid u32",
        "invalid u64",
        "invalid usize",
    ];
    let wanted = if whole.contains(&message) || message.ends_with("expected usize") || message.contains("expected u") {
        "must be a whole number, 0 or more"
    } else if message.contains("expected a boolean") || message.contains("expected bool") {
        "must be `true` or `false`"
    } else {
        return message.to_string();
    };
    let chars: Vec<char> = line.chars().collect();
    let at = column.saturating_sub(1).min(chars.len());
    let before: String = chars[..at].iter().collect();
    let key: String = {
        let head = before.trim_end().strip_suffix(':').unwrap_or("");
        let tail: Vec<char> = head
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        tail.into_iter().rev().collect()
    };
    let value: String = chars[at..]
        .iter()
        .take_while(|c| !matches!(c, ',' | '}' | ']' | '#'))
        .collect();
    match key.is_empty() {
        true => format!("{wanted}, not `{}`", value.trim()),
        false => format!("`{key}: {}`: {wanted}", value.trim()),
    }
}

/// Just the name of a rule, for labelling a rule that does not parse.
#[derive(Deserialize)]
struct NameOnly {
    name: Option<Spanned<String>>,
}

/// The lines of the rule whose first key is on line `start` (1-based): from its `-` to the
/// first later line indented no deeper than that `-`. Returns the first line number and the
/// text, or `None` when the rule is not a block item on its own lines (flow style).
fn rule_lines(lines: &[String], start: u64, next_start: Option<u64>) -> Option<(u64, String)> {
    let mut first = start as usize;
    // A `-` alone on its line puts the first key on the next one.
    while first > 0 && !lines.get(first - 1)?.trim_start().starts_with('-') {
        first -= 1;
        if start as usize - first > 1 {
            return None;
        }
    }
    if first == 0 {
        return None;
    }
    let dash_line = &lines[first - 1];
    let indent = dash_line.len() - dash_line.trim_start().len();
    let mut end = first; // exclusive, 1-based line after the last line of the rule
    for (idx, line) in lines.iter().enumerate().skip(first) {
        let line_no = idx as u64 + 1;
        if next_start.is_some_and(|n| line_no >= n) {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            end = idx + 1;
            continue;
        }
        if line.len() - trimmed.len() <= indent {
            break;
        }
        end = idx + 1;
    }
    if next_start.is_some_and(|n| n as usize <= first) {
        return None;
    }
    Some((first as u64, lines[first - 1..end.max(first)].join("\n")))
}

/// The error itself, and whether it came through an alias: an error about an aliased value wraps
/// it with where the anchor was defined and used (the position is the use).
fn innermost(e: &serde_saphyr::Error) -> (&serde_saphyr::Error, bool) {
    let mut inner = e;
    let mut through_alias = false;
    loop {
        match inner {
            serde_saphyr::Error::WithSnippet { error, .. } => inner = error,
            serde_saphyr::Error::AliasError { error, .. } => {
                through_alias = true;
                inner = error;
            }
            _ => return (inner, through_alias),
        }
    }
}

/// serde's words without the position they end with (the diagnostic carries it).
fn serde_text(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((msg, _)) => msg.to_string(),
        None => text,
    }
}

/// The key an unknown-field error names and the key it most likely misspells, if one is close.
fn misspelt(e: &serde_saphyr::Error) -> Option<(String, String)> {
    let text = serde_text(innermost(e).0);
    let (field, candidates) = unknown_field(&text)?;
    closest(field, candidates.iter().copied()).map(|meant| (field.to_string(), meant.to_string()))
}

/// A serde-saphyr error as a diagnostic, with a hint for misspelt keys.
fn from_serde(e: &serde_saphyr::Error, rule: Option<String>) -> Diagnostic {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let (inner, through_alias) = innermost(e);
    let message = limit_message(inner, through_alias).unwrap_or_else(|| hint_unknown_field(&serde_text(inner)));
    Diagnostic {
        line,
        column,
        rule,
        message,
    }
}

/// What a breached parser limit (see [`parse`]) means for the file, in its terms rather than
/// the parser's (`budget breached: Nodes { nodes: 1000001 }`).
fn limit_message(e: &serde_saphyr::Error, through_alias: bool) -> Option<String> {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    const ALIASES: &str = "through aliases (`*name`) that repeat anchors (`&name`)";
    let expands = |what: String| {
        if through_alias {
            format!("the file expands to more than {what} {ALIASES}")
        } else {
            format!("the file holds more than {what}")
        }
    };
    Some(match e {
        E::AliasReplayLimitExceeded { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::AliasExpansionLimitExceeded { .. } => {
            format!("the file expands to more than {MAX_ALIAS_VALUES} values {ALIASES}")
        }
        E::AliasReplayStackDepthExceeded { max_depth, .. } => {
            format!("aliases nested more than {max_depth} deep")
        }
        E::Budget { breach, .. } => match breach {
            B::Nodes { .. } | B::Events { .. } => expands(format!("{MAX_YAML_VALUES} YAML values")),
            B::ScalarBytes { .. } => expands(format!("{} MiB of text", (2 * MAX_FILE_BYTES) >> 20)),
            B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } | B::Aliases { .. } | B::Anchors { .. } => {
                "the file uses too many anchors (`&name`) and aliases (`*name`)".to_string()
            }
            B::Depth { depth } => format!("nested more than {} levels deep", depth.saturating_sub(1)),
            B::Documents { .. } => "too many YAML documents (`---`); a rule file is one document".to_string(),
            _ => return None,
        },
        // granit's limit on nested flow collections (`[[[…`, 255 deep).
        other if other.to_string().starts_with("recursion limit exceeded") => {
            "nested more than 255 levels deep in `[…]` or `{…}`".to_string()
        }
        _ => return None,
    })
}

/// `unknown field `maxln`, expected one of a, b` → "unknown key `maxln`; did you mean `maxlen`?"
fn hint_unknown_field(message: &str) -> String {
    let Some((field, candidates)) = unknown_field(message) else {
        return message.to_string();
    };
    match closest(field, candidates.iter().copied()) {
        Some(c) => format!("unknown key `{field}`; did you mean `{c}`?"),
        None => format!("unknown key `{field}`; expected one of: {}", candidates.join(", ")),
    }
}

/// `unknown field `maxln`, expected one of a, b` → (`maxln`, [a, b]).
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let expected = expected
        .trim_start_matches(',')
        .trim()
        .trim_start_matches("expected one of")
        .trim_start_matches("expected")
        .trim();
    let candidates = expected
        .split([',', ' '])
        .map(|s| s.trim_matches(|c: char| c == '`' || c.is_whitespace()))
        .filter(|s| !s.is_empty() && *s != "or")
        .collect();
    Some((field, candidates))
}

/// The candidate `key` most likely misspells, when one is close enough to suggest: the
/// "did you mean" of every mistake, in the rules and in their `tests:`.
pub(crate) fn closest<'c>(key: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, for "did you mean".
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("<rules>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str_with_env(text, "r.yaml", &no_env) {
            Ok(_) => vec![],
            Err(e) => e.diagnostics().iter().map(|d| d.render("r.yaml")).collect(),
        }
    }

    #[test]
    fn valid_minimal_file() {
        let rs = load_str_with_env(
            "rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: y } ]\n",
            "r.yaml",
            &no_env,
        )
        .unwrap();
        assert_eq!(rs.rules[0].summary(), "channel x -> stream y");
        assert_eq!(rs.rules[0].source.connection.url, "redis://127.0.0.1:6379");
    }

    #[test]
    fn misspelt_keys_in_two_rules_are_both_reported() {
        let text = "rules:\n  - name: a\n    source: { channel: x }\n    sinks:\n      - stream: y\n        maxln: 3\n  - name: b\n    sorce: { channel: x }\n    sinks: [ { stream: y } ]\n";
        let errs = errors(text);
        assert_eq!(
            errs,
            vec![
                "r.yaml:6:9: rule \"a\": unknown key `maxln`; did you mean `maxlen`?",
                "r.yaml:8:5: rule \"b\": unknown key `sorce`; did you mean `source`?",
            ]
        );
    }

    #[test]
    fn top_level_typo_and_yaml_syntax() {
        assert_eq!(
            errors("rulez: []\n"),
            vec!["r.yaml:1:1: unknown key `rulez`; did you mean `rules`?"]
        );
        let e = errors("rules: [\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("r.yaml:1:8: "), "{e:?}");
    }

    #[test]
    fn read_takes_only_a_regular_file_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kind = |p: &Path| match read(p) {
            Err(ConfigError::NotAFile { kind, .. }) => kind,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(kind(d), "a directory");
        assert_eq!(kind(Path::new("/dev/zero")), "a character device");
        let fifo = d.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(kind(&fifo), "a FIFO");
        // A symlink to a regular file is read; one to a device is not.
        std::fs::write(d.join("real.yaml"), "rules: []\n").unwrap();
        std::os::unix::fs::symlink("real.yaml", d.join("link.yaml")).unwrap();
        assert_eq!(read(&d.join("link.yaml")).unwrap(), "rules: []\n");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        assert_eq!(kind(&d.join("zero.yaml")), "a character device");
        // One byte over the limit (sparse: nothing is written).
        let big = d.join("big.yaml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        assert!(matches!(read(&big), Err(ConfigError::TooLarge { size, .. }) if size == MAX_FILE_BYTES + 1));
        std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES).unwrap();
        assert_eq!(read(&big).unwrap().len() as u64, MAX_FILE_BYTES);
    }

    #[test]
    fn text_that_is_not_utf8_is_a_mistake_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(&p, b"rules:\n  - name: \xc3\xa9t\xff\n").unwrap();
        let e = read(&p).unwrap_err();
        assert_eq!(
            e.diagnostics()[0].render("r.yaml"),
            "r.yaml:2:13: not UTF-8 text (byte 0xFF); save the file as UTF-8"
        );
    }

    #[test]
    fn breached_limits_are_said_in_the_files_terms() {
        let deep = format!("rules: {}{}\n", "[".repeat(300), "]".repeat(300));
        let e = errors(&deep);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].ends_with(": nested more than 255 levels deep in `[…]` or `{…}`"),
            "{e:?}"
        );
        let mut block = String::from("rules:\n");
        for level in 0..100 {
            block.push_str(&format!("{}- \n", "  ".repeat(level + 1)));
        }
        let e = errors(&block);
        assert!(
            e.iter()
                .any(|l| l.starts_with("r.yaml:65:") && l.ends_with(": nested more than 64 levels deep")),
            "{e:?}"
        );
        let mut laughs = String::from("x: &l0 [a, a, a, a, a, a, a, a, a, a]\n");
        for level in 1..7 {
            laughs.push_str(&format!(
                "x{level}: &l{level} [{}]\n",
                vec![format!("*l{}", level - 1); 10].join(", ")
            ));
        }
        let e = errors(&format!(
            "rules:\n  - name: a\n    source: {{ channel: x }}\n    sinks: [ {{ stream: y }} ]\n    transform:\n{}",
            laughs.lines().map(|l| format!("      {l}\n")).collect::<String>()
        ));
        assert_eq!(
            e,
            vec![
                "r.yaml:10:51: the file expands to more than 100000 values through aliases (`*name`) that repeat anchors (`&name`)"
            ]
        );
    }

    #[test]
    fn a_connection_with_a_mistake_is_reported_once_not_again_where_rules_use_it() {
        // The README's example with `REDIS_PASSWORD` unset.
        let text = "connections:\n  laravel: { url: \"redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0\", prefix: \"laravel_database_\" }\nrules:\n  - name: a\n    source: { channel: x, connection: laravel }\n    sinks: [ { stream: y, connection: laravel } ]\n";
        assert_eq!(
            errors(text),
            vec![
                "r.yaml:2:19: environment variable `REDIS_PASSWORD` is not set; set it, or write `${REDIS_PASSWORD:-default}`"
            ]
        );
        // A connection nobody defined is still unknown.
        let text =
            "rules:\n  - name: a\n    source: { channel: x, connection: larvel }\n    sinks: [ { stream: y } ]\n";
        assert_eq!(
            errors(text),
            vec![
                "r.yaml:3:39: rule \"a\": unknown connection `larvel`; define it under `connections:` or use one of: default"
            ]
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("maxln", "maxlen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn rule_line_slices() {
        let lines: Vec<String> = "rules:\n  - name: a\n    x: 1\n\n  - name: b\n    y: 2\nhttp: {}\n"
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            rule_lines(&lines, 2, Some(5)),
            Some((2, "  - name: a\n    x: 1\n".into()))
        );
        assert_eq!(rule_lines(&lines, 5, None), Some((5, "  - name: b\n    y: 2".into())));
    }
}
