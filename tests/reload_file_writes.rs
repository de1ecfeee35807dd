//! Every way ops replace the rule file reloads exactly once: writing in place, `cp` over it,
//! write-then-rename, `sed -i`, and a Kubernetes ConfigMap symlink swap. Reading the file (as
//! the reload itself does) triggers nothing.
//!
//! The router runs in-process: the watcher and the reload loop exactly as `run` wires them, with
//! a short debounce. Each write changes the rule set, and the test waits for the generation to
//! move, then checks that it moved by exactly one.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use redis_router::engine::Supervisor;
use redis_router::engine::{ConfigWatcher, ReloadStats, ReloadTrigger, Reloader};
use redis_router::stats::StatsRegistry;
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEBOUNCE: Duration = Duration::from_millis(100);

/// Rule file text: one channel rule per name.
fn rules(url: &str, names: &[&str]) -> String {
    let mut out = format!("connections:\n  default: {{ url: \"{url}\" }}\nrules:\n");
    for name in names {
        out.push_str(&format!(
            "  - name: {name}\n    source: {{ channel: \"in:{name}\" }}\n    sinks: [ {{ stream: \"out:{name}\" }} ]\n"
        ));
    }
    out
}

struct Router {
    stats: Arc<ReloadStats>,
    stop: CancellationToken,
    task: JoinHandle<Reloader>,
    _watcher: ConfigWatcher,
}

impl Router {
    /// Watch `path` and load it, as `run` does.
    async fn start(path: &Path) -> Router {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ReloadTrigger>(8);
        let watcher = ConfigWatcher::start(path, DEBOUNCE, tx).expect("watch the rule file");
        let supervisor = Supervisor::new(
            CancellationToken::new(),
            StatsRegistry::default(),
            Duration::from_secs(10),
        );
        let mut reloader = within(Reloader::start(path, supervisor))
            .await
            .unwrap_or_else(|e| panic!("initial rule file invalid:\n{e}"));
        let stats = reloader.stats();
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                reloader.serve(&mut rx, &stop).await;
                reloader
            })
        };
        Router {
            stats,
            stop,
            task,
            _watcher: watcher,
        }
    }

    fn generation(&self) -> u64 {
        ReloadStats::get(&self.stats.generation)
    }

    /// Wait until `generation` is running, then check nothing overshot it.
    async fn wait_generation(&self, generation: u64) {
        wait_for(&format!("generation {generation}"), TIMEOUT, || async {
            (self.generation() >= generation).then_some(())
        })
        .await;
        assert_eq!(self.generation(), generation, "one write, one reload");
    }

    fn running_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stats.rules().iter().map(|(s, _)| s.name.clone()).collect();
        names.sort();
        names
    }

    /// After the last write: nothing more may happen, whoever reads the file. This is a
    /// negative check, so it has to give the watcher time: three debounce periods.
    async fn assert_quiet(&self, path: &Path) {
        let before = (self.generation(), ReloadStats::get(&self.stats.unchanged));
        for _ in 0..3 {
            std::fs::read_to_string(path).expect("read the rule file");
            tokio::time::sleep(DEBOUNCE).await;
        }
        let after = (self.generation(), ReloadStats::get(&self.stats.unchanged));
        assert_eq!(
            before, after,
            "reading the file triggered a reload (generation, unchanged)"
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        let reloader = within(self.task).await.expect("reload loop");
        within(reloader.shutdown()).await;
    }
}

/// Run three writes with `write`, each adding a rule, and check one reload per write.
async fn three_writes(path: &Path, write: impl Fn(&Path, &str)) {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut names = vec!["base"];
    write_initial(path, &rules(&url, &names));
    let router = Router::start(path).await;
    assert_eq!(router.generation(), 1);
    for (k, name) in ["second", "third", "fourth"].into_iter().enumerate() {
        names.push(name);
        write(path, &rules(&url, &names));
        router.wait_generation(k as u64 + 2).await;
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        assert_eq!(router.running_names(), want);
    }
    router.assert_quiet(path).await;
    let s = &router.stats;
    assert_eq!(ReloadStats::get(&s.applied), 3);
    assert_eq!(ReloadStats::get(&s.rejected), 0);
    // A write is a burst of events; the debouncer may rarely split one into two batches, and
    // the second then finds the content unchanged. Reads never count here (see assert_quiet).
    assert!(
        ReloadStats::get(&s.unchanged) <= 3,
        "unchanged = {}",
        ReloadStats::get(&s.unchanged)
    );
    router.stop().await;
}

fn write_initial(path: &Path, text: &str) {
    if std::fs::symlink_metadata(path).is_err() {
        std::fs::write(path, text).expect("write the rule file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_in_place_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(&dir.path().join("routes.yaml"), |p, text| {
        std::fs::write(p, text).expect("write in place")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_over_the_file_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    three_writes(&dir.path().join("routes.yaml"), |p, text| {
        let src = staging.path().join("new.yaml");
        std::fs::write(&src, text).unwrap();
        let status = Command::new("cp").arg(&src).arg(p).status().expect("run cp");
        assert!(status.success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_rename_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(&dir.path().join("routes.yaml"), |p, text| {
        // What editors do: a temporary file next to the target, renamed over it.
        let tmp = p.with_file_name(".routes.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, p).expect("rename over the rule file");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_in_place_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(&dir.path().join("routes.yaml"), |p, text| {
        // `sed -i` writes a temporary file in the same directory and renames it over the
        // target: replace the whole text by the new one.
        let old = std::fs::read_to_string(p).unwrap();
        let added = text.strip_prefix(old.as_str()).expect("each write appends a rule");
        let escaped = added.trim_end().replace('\\', "\\\\").replace('\n', "\\n");
        let status = Command::new("sed")
            .arg("-i")
            .arg(format!("$ a\\{escaped}"))
            .arg(p)
            .status()
            .expect("run sed");
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(p).unwrap(), text, "sed wrote the expected text");
    })
    .await;
}

/// A ConfigMap volume as the kubelet writes it: `routes.yaml -> ..data/routes.yaml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory, points a new
/// `..data_tmp` link at it, renames that over `..data` and removes the old directory.
struct ConfigMapVolume {
    dir: PathBuf,
    version: std::cell::Cell<u32>,
}

impl ConfigMapVolume {
    fn new(dir: &Path, text: &str) -> ConfigMapVolume {
        let v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            version: std::cell::Cell::new(0),
        };
        let first = v.version_dir(0);
        std::fs::create_dir(&first).unwrap();
        std::fs::write(first.join("routes.yaml"), text).unwrap();
        std::os::unix::fs::symlink("..v0", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.yaml", dir.join("routes.yaml")).unwrap();
        v
    }

    fn version_dir(&self, n: u32) -> PathBuf {
        self.dir.join(format!("..v{n}"))
    }

    fn update(&self, text: &str) {
        let old = self.version.get();
        let new = old + 1;
        let new_dir = self.version_dir(new);
        std::fs::create_dir(&new_dir).unwrap();
        std::fs::write(new_dir.join("routes.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{new}"), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.version_dir(old)).unwrap();
        self.version.set(new);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let url = redis.url();
    let volume = ConfigMapVolume::new(dir.path(), &rules(&url, &["base"]));
    let path = dir.path().join("routes.yaml");
    let router = Router::start(&path).await;
    assert_eq!(router.generation(), 1);
    let mut names = vec!["base"];
    for (k, name) in ["second", "third", "fourth"].into_iter().enumerate() {
        names.push(name);
        volume.update(&rules(&url, &names));
        router.wait_generation(k as u64 + 2).await;
        assert_eq!(router.running_names().len(), names.len());
    }
    router.assert_quiet(&path).await;
    assert_eq!(ReloadStats::get(&router.stats.applied), 3);
    assert_eq!(ReloadStats::get(&router.stats.rejected), 0);
    router.stop().await;
}
