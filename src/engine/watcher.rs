//! Watching the rule file for changes: inotify on every directory the file's path goes
//! through, debounced, turned into [`ReloadTrigger`]s on the same channel that SIGHUP feeds.
//!
//! What a path reads as can change without the file being touched: editors and `sed -i` rename
//! a new file over it, a Kubernetes ConfigMap swaps a `..data` symlink, a deploy swaps
//! `current -> releases/v2` in a parent directory, and any directory on the way can be renamed
//! or replaced. So the path is resolved component by component, following every symlink
//! (relative or absolute, in a chain), and each (directory, name) pair it went through is a
//! dependency: the directory is watched, and an event on that name in it means the file may now
//! be something else. After a quiet period the path is resolved again, so the watch follows a
//! swap to the new target (and stops watching what the path no longer goes through), and only
//! then is a reload asked for, so the reload reads what the path leads to by then.
//!
//! inotify reports every event in a watched directory; an event on a name the path does not go
//! through (a log file written next to the rules, another file in `/etc`) costs a lookup and
//! nothing else: no log line, no timer, no reload. Only changes are asked for (create, delete,
//! rename, write, metadata): opens, reads and closes are not, so the reload reading the file
//! cannot cause another. inotify is used directly rather than through notify and its
//! debouncer, which log every event at TRACE: with `RUST_LOG=trace` and the log written into
//! the watched directory, each log line was an event that logged two more. Linux only, as the
//! rest of the router's deployment is.
//!
//! This module does not read the file: whether its content changed is for
//! [`super::reload::Reloader`] to decide, by hash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Quiet time after the last file event before a reload is requested: an editor's save, a
/// `cp` of a large file or a ConfigMap swap is a burst of events that should reload once.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// How many symlinks are followed when resolving the path, as Linux's own limit (ELOOP): a
/// loop ends the walk here instead of spinning.
const MAX_SYMLINKS: usize = 40;

/// Changes to a directory entry that can change what the path reads as. No opens, reads or
/// closes: reading the file must not look like a change. `ONLYDIR` because only directories
/// are watched (a name's own changes are reported by its directory).
const WATCH_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// Events on a watched directory itself (no name): it was deleted, moved or unmounted, or its
/// watch is gone; the path must be resolved again.
const SELF_CHANGED: EventMask = EventMask::DELETE_SELF
    .union(EventMask::MOVE_SELF)
    .union(EventMask::IGNORED)
    .union(EventMask::UNMOUNT);

/// Room for many events per read; inotify never splits one, and one is at most 16 bytes plus
/// a 256-byte name.
const EVENT_BUFFER: usize = 8192;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// The watcher saw the rule file (or a symlink or directory its path goes through) change.
    /// Skipped when the content is the same as the last content seen.
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
    /// The current directory, against which a relative path is resolved, is unknown.
    #[error("cannot watch {path}: the current directory is unknown: {source}")]
    CurrentDir {
        /// The rule file, as given.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// inotify refused (no instances or watches left, the directory missing or unreadable).
    #[error("cannot watch directory {dir}: {source}")]
    Inotify {
        /// The directory that was to be watched.
        dir: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A running watch on the rule file's path; stops when dropped.
pub struct ConfigWatcher {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatcher").field("path", &self.path).finish()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        // The task owns the inotify descriptor; aborting it closes it.
        self.task.abort();
    }
}

impl ConfigWatcher {
    /// Watch every directory `path` goes through and send [`ReloadTrigger::FileChanged`] on
    /// `tx` once changes concerning the file have been quiet for `debounce`.
    ///
    /// The send never waits: when the channel is full a reload is already pending, and it will
    /// read the file as it is by then.
    ///
    /// # Errors
    /// [`WatchError`] when the path has no file name, or the directory holding the file cannot
    /// be watched. Directories further up that cannot be watched (not readable) are skipped.
    ///
    /// # Panics
    /// Outside a Tokio runtime with I/O enabled.
    pub fn start(
        path: &Path,
        debounce: Duration,
        tx: mpsc::Sender<ReloadTrigger>,
    ) -> Result<ConfigWatcher, WatchError> {
        let shown = || path.display().to_string();
        if path.file_name().is_none() {
            return Err(WatchError::NoFileName { path: shown() });
        }
        let cwd = std::env::current_dir().map_err(|source| WatchError::CurrentDir { path: shown(), source })?;
        let inotify_err = |dir: &Path| {
            let dir = dir.display().to_string();
            move |source| WatchError::Inotify { dir, source }
        };
        let events = Inotify::init()
            .and_then(|inotify| inotify.into_event_stream(vec![0u8; EVENT_BUFFER]))
            .map_err(inotify_err(path))?;
        let mut state = WatchState {
            path: path.to_path_buf(),
            cwd,
            watches: events.watches(),
            names: HashMap::new(),
            target: PathBuf::new(),
        };
        let mut rewatched = state.rewatch();
        // The file's own directory must be watched; directories further up are a bonus when
        // they are not readable.
        let file_dir = rewatched.target.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(Err(e)) = rewatched.outcomes.remove(&file_dir) {
            return Err(inotify_err(&file_dir)(e));
        }
        debug!(
            file = %path.display(),
            target = %state.target.display(),
            dirs = state.names.len(),
            debounce_ms = debounce.as_millis() as u64,
            "Watching the rule file's path."
        );
        let task = tokio::spawn(watch(events, state, debounce, tx));
        Ok(ConfigWatcher {
            task,
            path: path.to_path_buf(),
        })
    }
}

/// What the watch task knows: the path, and per watched directory the names in it the path
/// goes through.
struct WatchState {
    path: PathBuf,
    /// What a relative path is resolved against (the process's, fixed at start).
    cwd: PathBuf,
    watches: Watches,
    names: HashMap<WatchDescriptor, HashSet<OsString>>,
    /// The file the path led to at the last resolution.
    target: PathBuf,
}

impl WatchState {
    /// Whether an event can change what the path reads as.
    fn is_relevant(&self, wd: &WatchDescriptor, mask: EventMask, name: Option<&OsStr>) -> bool {
        relevant(mask, name, self.names.get(wd))
    }

    /// Resolve the path again and make the watches match: watch each directory it goes
    /// through now, stop watching the ones it no longer does. Logs when the path now leads to
    /// another file. Returns the resolution and each directory's outcome.
    fn rewatch(&mut self) -> Rewatched {
        let resolution = resolve(&self.path, &self.cwd);
        let mut names: HashMap<WatchDescriptor, HashSet<OsString>> = HashMap::new();
        let mut outcomes = BTreeMap::new();
        for (dir, dir_names) in &resolution.dirs {
            match self.watches.add(dir, WATCH_MASK) {
                // One directory reached under two paths (a bind mount) is one watch.
                Ok(wd) => {
                    names.entry(wd).or_default().extend(dir_names.iter().cloned());
                    outcomes.insert(dir.clone(), Ok(()));
                }
                Err(e) => {
                    // A directory that does not exist (yet) is seen through its parent's watch.
                    debug!(dir = %dir.display(), error = %e, "Cannot watch a directory on the rule file's path.");
                    outcomes.insert(dir.clone(), Err(e));
                }
            }
        }
        for old in self.names.keys() {
            if !names.contains_key(old) {
                // Already gone when the directory was deleted: nothing to do then.
                let _ = self.watches.remove(old.clone());
            }
        }
        self.names = names;
        if !self.target.as_os_str().is_empty() && self.target != resolution.target {
            info!(
                file = %self.path.display(),
                target = %resolution.target.display(),
                previous = %self.target.display(),
                "The rule file now resolves to another file; watching it there."
            );
        }
        self.target = resolution.target.clone();
        Rewatched {
            target: resolution.target,
            outcomes,
        }
    }
}

struct Rewatched {
    target: PathBuf,
    outcomes: BTreeMap<PathBuf, std::io::Result<()>>,
}

/// Whether an event with `mask` on `name` (none: the watched directory itself) in a directory
/// whose relevant names are `names` (none: a watch no longer tracked) concerns the file.
fn relevant(mask: EventMask, name: Option<&OsStr>, names: Option<&HashSet<OsString>>) -> bool {
    if mask.contains(EventMask::Q_OVERFLOW) {
        // Events were lost: the file may have changed unseen.
        return true;
    }
    let Some(names) = names else {
        return false;
    };
    match name {
        Some(name) => names.contains(name),
        None => mask.intersects(SELF_CHANGED),
    }
}

/// The watch task: read events, keep a deadline `debounce` after the last relevant one, and
/// when it passes resolve the path again, rewatch, and ask for a reload.
async fn watch(
    mut events: EventStream<Vec<u8>>,
    mut state: WatchState,
    debounce: Duration,
    tx: mpsc::Sender<ReloadTrigger>,
) {
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            // Cancel safe: the stream keeps what it read and not yet yielded.
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if state.is_relevant(&event.wd, event.mask, event.name.as_deref()) {
                        deadline = Some(Instant::now() + debounce);
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "Watching the rule file failed; SIGHUP still reloads.");
                    return;
                }
                None => {
                    warn!("Watching the rule file ended; SIGHUP still reloads.");
                    return;
                }
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                deadline = None;
                // Rewatch first, then reload: what changes between the two is seen by the new
                // watches, and the reload reads the file as it is after both.
                state.rewatch();
                debug!(file = %state.path.display(), "Rule file changed.");
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(ReloadTrigger::FileChanged) {
                    // The router is stopping.
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a path leads and every (directory, name) pair it goes through on the way.
#[derive(Debug, PartialEq, Eq)]
struct Resolution {
    /// Each directory looked into, with the names looked up in it.
    dirs: BTreeMap<PathBuf, BTreeSet<OsString>>,
    /// The file the path leads to, every symlink followed (where it would be, when a part of
    /// the path is missing).
    target: PathBuf,
}

/// One step of the walk.
enum Part {
    Root,
    Parent,
    Name(OsString),
}

fn parts(path: &Path) -> impl Iterator<Item = Part> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Part::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Part::Parent),
        Component::Normal(name) => Some(Part::Name(name.to_os_string())),
    })
}

/// Resolve `path` (relative ones against `cwd`) one component at a time, as the kernel does:
/// a symlink's target replaces it in the walk, from the link's directory or from `/`. The
/// directory being walked never contains a symlink, so `..` is its lexical parent.
fn resolve(path: &Path, cwd: &Path) -> Resolution {
    let mut dirs: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
    let mut current = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        cwd.to_path_buf()
    };
    let mut todo: VecDeque<Part> = parts(path).collect();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part {
            Part::Root => current = PathBuf::from("/"),
            Part::Parent => {
                current.pop();
            }
            Part::Name(name) => {
                dirs.entry(current.clone()).or_default().insert(name.clone());
                let next = current.join(&name);
                let link = std::fs::symlink_metadata(&next)
                    .is_ok_and(|m| m.file_type().is_symlink())
                    .then(|| std::fs::read_link(&next).ok())
                    .flatten();
                match link {
                    Some(target) if links < MAX_SYMLINKS => {
                        links += 1;
                        // The target's parts come next, in order, before the rest of the path.
                        for part in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                            todo.push_front(part);
                        }
                    }
                    _ => current = next,
                }
            }
        }
    }
    Resolution { dirs, target: current }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(list: &[&str]) -> HashSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_changes_to_the_names_on_the_path_count() {
        let on_path = names(&["routes.yaml", "..data"]);
        let name = |n: &'static str| Some(OsStr::new(n));
        let cases = [
            (EventMask::CREATE, name("routes.yaml"), Some(&on_path), true),
            (EventMask::MODIFY, name("routes.yaml"), Some(&on_path), true),
            (EventMask::ATTRIB, name("routes.yaml"), Some(&on_path), true),
            (EventMask::DELETE, name("routes.yaml"), Some(&on_path), true),
            (EventMask::MOVED_TO, name("routes.yaml"), Some(&on_path), true),
            (EventMask::MOVED_TO, name("..data"), Some(&on_path), true),
            (
                EventMask::MOVED_FROM | EventMask::ISDIR,
                name("..data"),
                Some(&on_path),
                true,
            ),
            // Other names in a watched directory: the log written next to the rules, an
            // editor's swap file, the new version directory before the swap.
            (EventMask::MODIFY, name("router.log"), Some(&on_path), false),
            (EventMask::CREATE, name(".routes.yaml.swp"), Some(&on_path), false),
            (
                EventMask::CREATE | EventMask::ISDIR,
                name("..2024_01_01"),
                Some(&on_path),
                false,
            ),
            // The watched directory itself deleted, moved, unmounted, or its watch gone.
            (EventMask::DELETE_SELF, None, Some(&on_path), true),
            (EventMask::MOVE_SELF, None, Some(&on_path), true),
            (EventMask::IGNORED, None, Some(&on_path), true),
            // A watch already dropped (the path no longer goes through it).
            (EventMask::MODIFY, name("routes.yaml"), None, false),
            (EventMask::IGNORED, None, None, false),
            // Lost events: the file may have changed.
            (EventMask::Q_OVERFLOW, None, None, true),
        ];
        for (mask, name, names, want) in cases {
            assert_eq!(relevant(mask, name, names), want, "{mask:?} {name:?}");
        }
    }

    fn dir_names(r: &Resolution, dir: &Path) -> Vec<String> {
        r.dirs
            .get(dir)
            .map(|n| n.iter().map(|n| n.to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_plain_file_depends_on_each_ancestor_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::write(d.join("routes.yaml"), "rules: []\n").unwrap();
        let r = resolve(&d.join("routes.yaml"), Path::new("/"));
        assert_eq!(r.target, d.join("routes.yaml"));
        assert_eq!(dir_names(&r, &d), ["routes.yaml"]);
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(dir_names(&r, d.parent().unwrap()), [name]);
        assert!(r.dirs.contains_key(Path::new("/")));
        // A relative path resolves against the given current directory.
        let r = resolve(Path::new("./routes.yaml"), &d);
        assert_eq!(r.target, d.join("routes.yaml"));
        assert_eq!(dir_names(&r, &d), ["routes.yaml"]);
    }

    #[test]
    fn configmap_links_in_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/routes.yaml"), "rules: []\n").unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
        let r = resolve(&d.join("routes.yaml"), Path::new("/"));
        assert_eq!(r.target, d.join("..v1/routes.yaml"));
        assert_eq!(dir_names(&r, &d), ["..data", "..v1", "routes.yaml"]);
        assert_eq!(dir_names(&r, &d.join("..v1")), ["routes.yaml"]);
    }

    #[test]
    fn a_chain_through_parent_directories_with_absolute_and_relative_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("shared")).unwrap();
        std::fs::write(d.join("shared/a.yaml"), "rules: []\n").unwrap();
        std::fs::create_dir(d.join("deploy")).unwrap();
        symlink("../shared/a.yaml", d.join("deploy/routes.yaml")).unwrap();
        symlink(d.join("deploy"), d.join("hop")).unwrap();
        symlink("hop", d.join("current")).unwrap();
        let r = resolve(&d.join("current/routes.yaml"), Path::new("/"));
        assert_eq!(r.target, d.join("shared/a.yaml"));
        assert_eq!(dir_names(&r, &d), ["current", "deploy", "hop", "shared"]);
        assert_eq!(dir_names(&r, &d.join("deploy")), ["routes.yaml"]);
        assert_eq!(dir_names(&r, &d.join("shared")), ["a.yaml"]);
        assert!(
            !r.dirs.contains_key(&d.join("current")),
            "a symlink is never a directory walked"
        );
    }

    #[test]
    fn missing_parts_and_loops_end_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        // A deleted file, and a directory not created yet: the deepest existing directory is
        // among those looked into, so its creation is seen.
        let r = resolve(&d.join("later/routes.yaml"), Path::new("/"));
        assert_eq!(r.target, d.join("later/routes.yaml"));
        assert_eq!(dir_names(&r, &d), ["later"]);
        // A loop: a -> b -> a.
        symlink("b", d.join("a")).unwrap();
        symlink("a", d.join("b")).unwrap();
        let r = resolve(&d.join("a/routes.yaml"), Path::new("/"));
        assert_eq!(dir_names(&r, &d), ["a", "b"]);
    }

    #[test]
    fn signal_wins_when_coalescing() {
        use ReloadTrigger::*;
        assert_eq!(FileChanged.merge(FileChanged), FileChanged);
        assert_eq!(FileChanged.merge(Signal), Signal);
        assert_eq!(Signal.merge(FileChanged), Signal);
    }
}
