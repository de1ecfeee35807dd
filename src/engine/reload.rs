//! One reload step, shared by `run` and the tests: read the rule file, validate it completely,
//! and either apply it through the [`Supervisor`] or reject it with every mistake logged and
//! the running rules left as they are.
//!
//! Each applied file is a *generation* (the file `run` starts with is generation 1). The
//! counters and the current generation live in [`ReloadStats`], shared behind an `Arc` so that
//! observers (tests, the HTTP endpoint) can read them while the reload loop owns the
//! supervisor. This module does not watch anything: [`super::watcher`] and SIGHUP send
//! [`ReloadTrigger`]s, [`Reloader::serve`] turns them into reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::diff::RuleSetDiff;
use super::supervisor::{Handover, Supervisor};
use super::watcher::ReloadTrigger;
use crate::config::{self, ConfigError, RuleSpec};
use crate::stats::RuleStatus;

/// Hex digits of the file's SHA-256 shown in logs and status: enough to tell two versions of
/// one file apart at a glance.
const HASH_PREFIX_LEN: usize = 12;

/// Reload counters and the rule set now running. Plain atomics plus one small lock, written
/// only by the reload loop.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Generation of the rule set running: 1 for the file `run` started with, +1 per applied
    /// reload.
    pub generation: AtomicU64,
    /// Reloads applied (generation 1 not included).
    pub applied: AtomicU64,
    /// Reloads refused because the file was unreadable or invalid; the old rules kept running.
    pub rejected: AtomicU64,
    /// File events after which the content was the same as the last content seen (a `touch`,
    /// a save without changes, a second event of one write): nothing was done.
    pub unchanged: AtomicU64,
    /// Upper bound on Pub/Sub messages delivered twice while a changed rule was handed over to
    /// its new instance, over all reloads.
    pub pubsub_overlap_duplicates: AtomicU64,
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    hash: String,
    rules: Vec<(Arc<RuleSpec>, Arc<RuleStatus>)>,
    last_rejection: Vec<String>,
    history: std::collections::VecDeque<ReloadRecord>,
}

/// Reloads kept for the status page.
pub const RELOAD_HISTORY: usize = 20;

/// One reload, applied or rejected, as the status page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// When, RFC 3339.
    pub at: String,
    /// `applied` or `rejected`.
    pub result: &'static str,
    /// The generation running after it.
    pub generation: u64,
    /// What set it off (`file`, `signal`).
    pub trigger: String,
    /// Rules started, restarted and stopped (applied reloads).
    pub added: Vec<String>,
    /// Rules drained and restarted.
    pub changed: Vec<String>,
    /// Rules drained and stopped.
    pub removed: Vec<String>,
    /// The mistakes (rejected reloads), as `check` prints them.
    pub errors: Vec<String>,
}

impl ReloadStats {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Only whole values are stored under this lock; a panic cannot leave it half-written.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last [`RELOAD_HISTORY`] reloads, oldest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.current().history.iter().cloned().collect()
    }

    fn record(&self, record: ReloadRecord) {
        let mut current = self.current();
        if current.history.len() == RELOAD_HISTORY {
            current.history.pop_front();
        }
        current.history.push_back(record);
    }

    /// Hash prefix of the file the running rules came from.
    pub fn hash(&self) -> String {
        self.current().hash.clone()
    }

    /// The running rule instances with their live status, as of the last (re)load.
    pub fn rules(&self) -> Vec<(Arc<RuleSpec>, Arc<RuleStatus>)> {
        self.current().rules.clone()
    }

    /// The mistakes of the last rejected file, rendered as `check` prints them; empty once a
    /// good file has been applied since.
    pub fn last_rejection(&self) -> Vec<String> {
        self.current().last_rejection.clone()
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one call to [`Reloader::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file was valid and is now running as `generation`.
    Applied {
        /// The new generation.
        generation: u64,
        /// What was started, stopped and restarted.
        diff: RuleSetDiff,
    },
    /// The file could not be read or is invalid; the old rules stay.
    Rejected,
    /// A file event, but the content is the one seen last: nothing to do.
    Unchanged,
}

/// Owns the supervisor and the path of the rule file; applies each good version of the file.
pub struct Reloader {
    path: PathBuf,
    supervisor: Supervisor,
    stats: Arc<ReloadStats>,
    /// Full SHA-256 of the last content read, applied or rejected: a file event with the same
    /// content is skipped.
    last_seen: [u8; 32],
    /// Full SHA-256 of the content the running rules came from: a reload that finds it again
    /// (a signal with nothing changed, a file put back after a rejected edit) is `unchanged`.
    running: [u8; 32],
}

/// Each warning of a file about to run, once, as `check` prints it.
fn log_warnings(set: &config::RuleSet, file: &str) {
    for d in &set.warnings {
        warn!(line = d.line, column = d.column, "{}", d.render_warning(file));
    }
}

impl Reloader {
    /// Load `path` and start its rules as generation 1.
    ///
    /// # Errors
    /// The [`ConfigError`] of a file that cannot be read or is invalid; nothing is started.
    pub async fn start(path: impl Into<PathBuf>, mut supervisor: Supervisor) -> Result<Reloader, ConfigError> {
        let path = path.into();
        let (text, digest) = read(path.clone()).await?;
        let set = validate(text, path.display().to_string()).await?;
        log_warnings(&set, &path.display().to_string());
        supervisor.apply(&set).await;
        let stats = Arc::new(ReloadStats::default());
        stats.generation.store(1, Ordering::Relaxed);
        let hash = short_hash(&digest);
        {
            let mut current = stats.current();
            current.hash = hash.clone();
            current.rules = supervisor.statuses();
        }
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        info!(generation = 1, hash = %hash, rules = ?names, file = %path.display(), "Rules loaded.");
        Ok(Reloader {
            path,
            supervisor,
            stats,
            last_seen: digest,
            running: digest,
        })
    }

    /// The counters and current generation, shareable with observers.
    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// The supervisor running the rules.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read and validate the file; apply it if it is valid, otherwise log every mistake at
    /// ERROR (with line and column, as `check` prints them), count the rejection and leave the
    /// running rules alone. Logs one INFO line per applied reload: generation, hash, and the
    /// names added, changed and removed.
    ///
    /// Content that hashes the same as the running rules' is `unchanged`, whatever asked (a
    /// SIGHUP with nothing changed, a file put back as it was after a rejected edit): nothing
    /// restarts and the generation stays; a signal is still answered with an INFO line. A
    /// [`ReloadTrigger::FileChanged`] whose content is the last content seen (a rejected file
    /// touched again) is `unchanged` too, without logging its mistakes again; a
    /// [`ReloadTrigger::Signal`] validates such content again and answers with them.
    pub async fn reload(&mut self, trigger: ReloadTrigger) -> ReloadOutcome {
        let prepared = prepare(self.path.clone(), trigger, self.last_seen, self.running).await;
        self.apply(trigger, prepared).await
    }

    /// The rest of [`Reloader::reload`], once the file has been read and validated.
    async fn apply(&mut self, trigger: ReloadTrigger, prepared: Prepared) -> ReloadOutcome {
        let (hash, set) = match prepared {
            Prepared::Unreadable(e) => return self.reject(trigger, None, &e),
            Prepared::Unchanged { digest, hash } => {
                self.last_seen = digest;
                ReloadStats::add(&self.stats.unchanged);
                let generation = ReloadStats::get(&self.stats.generation);
                if trigger == ReloadTrigger::Signal {
                    info!(hash = %hash, generation, trigger = %trigger, "Rule file unchanged; nothing to reload.");
                } else {
                    debug!(hash = %hash, generation, "Rule file event without a change of content; nothing to reload.");
                }
                return ReloadOutcome::Unchanged;
            }
            Prepared::Invalid { digest, hash, error } => {
                self.last_seen = digest;
                return self.reject(trigger, Some(&hash), &error);
            }
            Prepared::Valid { digest, hash, set } => {
                self.last_seen = digest;
                self.running = digest;
                (hash, set)
            }
        };
        log_warnings(&set, &self.path.display().to_string());
        let (diff, handovers) = self.supervisor.apply_with_handovers(&set).await;
        let duplicates: u64 = handovers.iter().map(|h| h.duplicates_at_most).sum();
        let missed: Vec<&str> = handovers
            .iter()
            .filter(|h| !h.subscribed)
            .map(|h: &Handover| h.rule.as_str())
            .collect();
        if !missed.is_empty() {
            warn!(rules = ?missed, "Some Pub/Sub rules were stopped before their new instance subscribed.");
        }
        self.stats
            .pubsub_overlap_duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        let generation = self.stats.generation.fetch_add(1, Ordering::Relaxed) + 1;
        ReloadStats::add(&self.stats.applied);
        {
            let mut current = self.stats.current();
            current.hash = hash.clone();
            current.rules = self.supervisor.statuses();
            current.last_rejection.clear();
        }
        info!(
            generation,
            hash = %hash,
            trigger = %trigger,
            added = ?diff.added,
            changed = ?diff.changed,
            removed = ?diff.removed,
            pubsub_overlap_duplicates = duplicates,
            "Rules reloaded."
        );
        self.stats.record(ReloadRecord {
            at: crate::filter::now_rfc3339(),
            result: "applied",
            generation,
            trigger: trigger.to_string(),
            added: diff.added.clone(),
            changed: diff.changed.clone(),
            removed: diff.removed.clone(),
            errors: Vec::new(),
        });
        ReloadOutcome::Applied { generation, diff }
    }

    /// Count and log a rejected file, and leave the running rules alone: each mistake at ERROR
    /// with its line and column (as `check` prints them), then one line saying the reload was
    /// rejected, with why the file could not be read when it could not. `hash` is that of the
    /// content, when there was content.
    fn reject(&mut self, trigger: ReloadTrigger, hash: Option<&str>, e: &ConfigError) -> ReloadOutcome {
        ReloadStats::add(&self.stats.rejected);
        let file = self.path.display().to_string();
        let generation = ReloadStats::get(&self.stats.generation);
        let rendered: Vec<String> = e.diagnostics().iter().map(|d| d.render(&file)).collect();
        for (d, line) in e.diagnostics().iter().zip(&rendered) {
            error!(line = d.line, column = d.column, "{line}");
        }
        if rendered.is_empty() && hash.is_none() {
            error!(trigger = %trigger, error = %e, generation, "Reload rejected: the rule file cannot be read; the running rules stay.");
        } else {
            if rendered.is_empty() {
                error!(error = %e, "Rule file invalid.");
            }
            error!(
                trigger = %trigger,
                hash = hash.unwrap_or("-"),
                errors = rendered.len(),
                generation,
                "Reload rejected; the running rules stay."
            );
        }
        let errors = if rendered.is_empty() {
            vec![e.to_string()]
        } else {
            rendered
        };
        self.stats.record(ReloadRecord {
            at: crate::filter::now_rfc3339(),
            result: "rejected",
            generation,
            trigger: trigger.to_string(),
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            errors: errors.iter().map(|e| crate::mask::text(e)).collect(),
        });
        self.stats.current().last_rejection = errors;
        ReloadOutcome::Rejected
    }

    /// Reload on every trigger from `triggers` until `stop` is cancelled or every sender is
    /// gone. Triggers that queue up during a reload are coalesced into one.
    pub async fn serve(&mut self, triggers: &mut mpsc::Receiver<ReloadTrigger>, stop: &CancellationToken) {
        loop {
            let mut trigger = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                t = triggers.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
            };
            while let Ok(more) = triggers.try_recv() {
                trigger = trigger.merge(more);
            }
            // Reading cannot wait on a FIFO (see `config::read`), but a file on a hung network
            // mount can, and a file at the parser's limits takes seconds to refuse: a stop
            // waits for neither (both run on the blocking pool and change nothing). Applying
            // is not raced: a diff half applied would leave rules neither old nor new.
            let prepared = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                prepared = prepare(self.path.clone(), trigger, self.last_seen, self.running) => prepared,
            };
            self.apply(trigger, prepared).await;
        }
    }

    /// Stop every rule (see [`Supervisor::shutdown`]); returns the rules that had to be aborted.
    pub async fn shutdown(self) -> Vec<String> {
        self.supervisor.shutdown().await
    }
}

impl ReloadStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A read and validated file, before anything is counted or applied.
enum Prepared {
    /// The file could not be read.
    Unreadable(ConfigError),
    /// The content the rules run from, or a file event with the content seen last.
    Unchanged { digest: [u8; 32], hash: String },
    /// New content with mistakes.
    Invalid {
        digest: [u8; 32],
        hash: String,
        error: ConfigError,
    },
    /// New content, valid.
    Valid {
        digest: [u8; 32],
        hash: String,
        set: config::RuleSet,
    },
}

/// Read the file and, unless it is the content running (`running`) or a file event finds the
/// content seen last (`last_seen`), validate it. Changes nothing, so it can be abandoned at any
/// point.
async fn prepare(path: PathBuf, trigger: ReloadTrigger, last_seen: [u8; 32], running: [u8; 32]) -> Prepared {
    let file = path.display().to_string();
    let (text, digest) = match read(path).await {
        Ok(read) => read,
        Err(e) => return Prepared::Unreadable(e),
    };
    let hash = short_hash(&digest);
    if digest == running || (trigger == ReloadTrigger::FileChanged && digest == last_seen) {
        return Prepared::Unchanged { digest, hash };
    }
    match validate(text, file).await {
        Ok(set) => Prepared::Valid { digest, hash, set },
        Err(error) => Prepared::Invalid { digest, hash, error },
    }
}

/// The file's text (read by [`config::read`]: bounded, never waiting on a special file) and the
/// SHA-256 of its bytes, on the blocking pool so that file I/O never holds a runtime thread.
async fn read(path: PathBuf) -> Result<(String, [u8; 32]), ConfigError> {
    let shown = path.display().to_string();
    let task = tokio::task::spawn_blocking(move || {
        let text = config::read(&path)?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        Ok((text, digest))
    });
    task.await.unwrap_or_else(|e| {
        Err(ConfigError::Io {
            path: shown,
            source: std::io::Error::other(format!("the reading task failed: {e}")),
        })
    })
}

/// Parse and validate the text on the blocking pool: a large or hostile file (10,000 rules,
/// aliases up to the parser's limits) takes up to a second or two of CPU, which must not hold
/// a runtime thread that rules need.
async fn validate(text: String, file: String) -> Result<config::RuleSet, ConfigError> {
    let shown = file.clone();
    let task = tokio::task::spawn_blocking(move || config::load_str(&text, &file));
    task.await.unwrap_or_else(|e| {
        Err(ConfigError::Io {
            path: shown,
            source: std::io::Error::other(format!("the validating task failed: {e}")),
        })
    })
}

fn short_hash(digest: &[u8; 32]) -> String {
    let mut hex = hex::encode(digest);
    hex.truncate(HASH_PREFIX_LEN);
    hex
}
