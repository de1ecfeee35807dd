//! Watching the rule file for changes: notify on the file's parent directory, debounced, turned
//! into [`ReloadTrigger`]s on the same channel that SIGHUP feeds.
//!
//! The directory is watched rather than the file because the ways ops replace a file do not
//! keep its inode: editors and `sed -i` write a temporary file and rename it over the old one,
//! and a Kubernetes ConfigMap volume swaps a `..data` symlink to a new timestamped directory
//! (`routes.yaml -> ..data/routes.yaml`). A watch on the file itself would follow the old inode
//! and go quiet after the first such write. Only create, modify and remove events count: notify
//! 8 also reports opens and closes, and the reload reading the file must not trigger another
//! reload.
//!
//! This module does not read the file: whether its content changed is for
//! [`super::reload::Reloader`] to decide, by hash.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{Event, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Quiet time after the last file event before a reload is requested: an editor's save, a
/// `cp` of a large file or a ConfigMap swap is a burst of events that should reload once.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// How many symlinks are followed when working out which names in the directory the file
/// depends on (a loop ends the walk here instead of spinning).
const MAX_SYMLINKS: usize = 8;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// The watcher saw the rule file (or a symlink it goes through) change. Skipped when the
    /// content is the same as the last content seen.
    FileChanged,
    /// SIGHUP: reload even when the content looks the same, so that ops always get an answer
    /// in the log.
    Signal,
}

impl ReloadTrigger {
    /// The stronger of two pending triggers (a signal wins), for coalescing a queue of them
    /// into one reload.
    pub fn merge(self, other: ReloadTrigger) -> ReloadTrigger {
        if self == ReloadTrigger::Signal || other == ReloadTrigger::Signal {
            ReloadTrigger::Signal
        } else {
            ReloadTrigger::FileChanged
        }
    }

    /// `file` or `signal`, for the reload log line.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::FileChanged => "file",
            ReloadTrigger::Signal => "signal",
        }
    }
}

impl fmt::Display for ReloadTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The watcher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path names no file inside a directory (`/`, `..`).
    #[error("cannot watch {path}: it does not name a file in a directory")]
    NoFileName {
        /// The rule file, as given.
        path: String,
    },
    /// notify refused (no inotify instances left, directory missing, …).
    #[error("cannot watch directory {dir}: {source}")]
    Notify {
        /// The directory that was to be watched.
        dir: String,
        /// What notify said.
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

/// A running watch on the rule file's directory; stops when dropped.
pub struct ConfigWatcher {
    // Held for its Drop: dropping it stops the notify thread and the debouncer thread.
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    dir: PathBuf,
}

impl fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatcher").field("dir", &self.dir).finish()
    }
}

impl ConfigWatcher {
    /// Watch `path`'s directory and send [`ReloadTrigger::FileChanged`] on `tx` once events
    /// concerning the file have been quiet for `debounce`.
    ///
    /// The send never blocks the notify thread: when the channel is full a reload is already
    /// pending, and it will read the file as it is by then.
    ///
    /// # Errors
    /// [`WatchError`] when the path has no file name or notify cannot watch the directory.
    pub fn start(
        path: &Path,
        debounce: Duration,
        tx: mpsc::Sender<ReloadTrigger>,
    ) -> Result<ConfigWatcher, WatchError> {
        let file_name = path
            .file_name()
            .ok_or_else(|| WatchError::NoFileName {
                path: path.display().to_string(),
            })?
            .to_os_string();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let notify_err = |source| WatchError::Notify {
            dir: dir.display().to_string(),
            source,
        };
        let mut filter = EventFilter::new(dir.clone(), file_name);
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                if filter.any_relevant(events.iter().map(|e| &e.event)) {
                    debug!(events = events.len(), "Rule file changed.");
                    // Full: a reload is already queued and will see this change too. Closed:
                    // the router is stopping.
                    let _ = tx.try_send(ReloadTrigger::FileChanged);
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!(error = %e, "Watching the rule file failed; SIGHUP still reloads.");
                }
            }
        };
        let mut debouncer = new_debouncer(debounce, None, handler).map_err(notify_err)?;
        debouncer.watch(&dir, RecursiveMode::NonRecursive).map_err(notify_err)?;
        debug!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "Watching the rule file's directory.");
        Ok(ConfigWatcher {
            _debouncer: debouncer,
            dir,
        })
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Decides which events concern the rule file.
struct EventFilter {
    dir: PathBuf,
    file_name: OsString,
    /// Names in `dir` the file depends on: its own, and the first component of each symlink
    /// target inside `dir` (`..data` in a ConfigMap volume). Recomputed on every batch and
    /// kept from the previous one, so that the name a swap replaced still matches.
    names: HashSet<OsString>,
}

impl EventFilter {
    fn new(dir: PathBuf, file_name: OsString) -> EventFilter {
        let names = dependent_names(&dir, &file_name);
        EventFilter { dir, file_name, names }
    }

    fn any_relevant<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> bool {
        self.names.extend(dependent_names(&self.dir, &self.file_name));
        let relevant = events.into_iter().any(|e| is_relevant(e, &self.names));
        // Forget names the file no longer goes through (the old `..2024_…` directory).
        self.names = dependent_names(&self.dir, &self.file_name);
        relevant
    }
}

/// Whether `event` is a create, modify or remove of one of `names`, or notify lost events and
/// asks for a rescan (then the file may have changed unseen).
fn is_relevant(event: &Event, names: &HashSet<OsString>) -> bool {
    if event.need_rescan() {
        return true;
    }
    let kind_counts = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    );
    kind_counts
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(n)))
}

/// The names in `dir` whose change can change what `dir/file_name` reads as.
fn dependent_names(dir: &Path, file_name: &OsString) -> HashSet<OsString> {
    let mut names = HashSet::from([file_name.clone()]);
    let mut current = dir.join(file_name);
    for _ in 0..MAX_SYMLINKS {
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        let target = if target.is_absolute() {
            target
        } else {
            current.parent().unwrap_or(dir).join(target)
        };
        if let Ok(rest) = target.strip_prefix(dir)
            && let Some(first) = rest.components().next()
        {
            names.insert(first.as_os_str().to_os_string());
        }
        current = target;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_debouncer_full::notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, Flag, ModifyKind, RemoveKind, RenameMode,
    };

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn only_create_modify_remove_of_the_file_count() {
        let names = HashSet::from([OsString::from("routes.yaml"), OsString::from("..data")]);
        let cases = [
            (EventKind::Create(CreateKind::File), vec!["/d/routes.yaml"], true),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                vec!["/d/routes.yaml"],
                true,
            ),
            (EventKind::Remove(RemoveKind::File), vec!["/d/routes.yaml"], true),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                vec!["/d/.routes.yaml.swp", "/d/routes.yaml"],
                true,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                vec!["/d/..data_tmp", "/d/..data"],
                true,
            ),
            // Reading the file (what a reload does) must not trigger another reload.
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                vec!["/d/routes.yaml"],
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                vec!["/d/routes.yaml"],
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                vec!["/d/routes.yaml"],
                false,
            ),
            (EventKind::Other, vec!["/d/routes.yaml"], false),
            // Other files in the directory.
            (EventKind::Create(CreateKind::File), vec!["/d/other.yaml"], false),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                vec!["/d/sedX1b2c3"],
                false,
            ),
            (EventKind::Create(CreateKind::Folder), vec!["/d/..2024_01_01"], false),
        ];
        for (kind, paths, want) in cases {
            assert_eq!(is_relevant(&event(kind, &paths), &names), want, "{kind:?} {paths:?}");
        }
        let rescan = event(EventKind::Other, &[]).set_flag(Flag::Rescan);
        assert!(is_relevant(&rescan, &names), "a rescan may hide a change");
    }

    #[test]
    fn symlinked_file_depends_on_the_links_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/routes.yaml"), "rules: []\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
        let names = dependent_names(d, &OsString::from("routes.yaml"));
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, vec![OsString::from("..data"), OsString::from("routes.yaml")]);

        std::fs::write(d.join("plain.yaml"), "rules: []\n").unwrap();
        assert_eq!(
            dependent_names(d, &OsString::from("plain.yaml")),
            HashSet::from([OsString::from("plain.yaml")])
        );
    }

    #[test]
    fn signal_wins_when_coalescing() {
        use ReloadTrigger::*;
        assert_eq!(FileChanged.merge(FileChanged), FileChanged);
        assert_eq!(FileChanged.merge(Signal), Signal);
        assert_eq!(Signal.merge(FileChanged), Signal);
    }
}
