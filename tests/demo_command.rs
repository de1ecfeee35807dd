//! `redis-router demo`: with only redis-server on PATH, it tells where each message of the
//! design's scenarios went, stops the router and its redis-server, and exits 0; without
//! redis-server it says so and exits 1.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::router_bin;

/// How long the whole demo may take; it needs well under a second.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `redis-router demo` in `dir`, killing it if it outlives [`DEMO_TIMEOUT`].
fn run_demo(path_env: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(router_bin());
    cmd.arg("demo")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = path_env {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().expect("spawn redis-router demo");
    // Read both pipes on their own threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-router demo did not exit within {DEMO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout thread").expect("read stdout"),
        stderr: err.join().expect("stderr thread").expect("read stderr"),
    }
}

/// The story with what changes from run to run (port, entry ids, the time) replaced by
/// placeholders, after checking each has the right shape.
fn normalize(story: &str) -> (String, u16) {
    let mut port = 0;
    let lines: Vec<String> = story
        .lines()
        .map(|line| {
            if let Some((head, tail)) = line.split_once("127.0.0.1:") {
                let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
                port = digits.parse().expect("a port after 127.0.0.1:");
                return format!("{head}127.0.0.1:PORT{}", &tail[digits.len()..]);
            }
            if let Some((head, time)) = line.split_once("processed_at: ") {
                assert!(
                    humantime::parse_rfc3339(time).is_ok(),
                    "processed_at is RFC 3339: {time}"
                );
                return format!("{head}processed_at: TIME");
            }
            line.split(' ')
                .map(|word| {
                    let bare = word.trim_end_matches(':');
                    let is_id = bare.split_once('-').is_some_and(|(ms, seq)| {
                        !ms.is_empty() && !seq.is_empty() && (ms.chars().chain(seq.chars())).all(|c| c.is_ascii_digit())
                    });
                    if is_id {
                        word.replacen(bare, "ID", 1)
                    } else {
                        word.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (lines.join("\n") + "\n", port)
}

#[test]
fn demo_tells_where_each_message_went_and_stops_cleanly() {
    let out = run_demo(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (story, port) = normalize(&stdout);
    assert_eq!(
        story,
        r#"redis-router demo: the rules of routes.example.yaml against a throwaway redis-server on 127.0.0.1:PORT.
  orders-to-stream: channel events:order -> stream processed_stream
  demo-stream-to-processed: stream demo_stream (group router) -> stream processed_stream
  demo-stream-to-b: stream demo_stream (group to-b) -> laravel queue to-b (App\Jobs\CALLP2)

1. A shop publishes a big order on Pub/Sub, which keeps nothing for a subscriber that is away.
   $ redis-cli PUBLISH events:order '{"event":"order.created","data":{"order_id":987,"total":150000}}'
   orders-to-stream kept it in processed_stream, entry ID:
     original_channel: events:order
     data: {"event":"order.created","data":{"order_id":987,"total":150000}}

2. A small order does not pass the rule's filter: @.event == 'order.created' && @.data.total >= 100000
   $ redis-cli PUBLISH events:order '{"event":"order.created","data":{"order_id":988,"total":500}}'
   orders-to-stream filtered it out: processed_stream still holds 1 entry.

3. A service adds an entry to demo_stream. Two rules read it, each through its own consumer group:
   nothing added while the router is down is skipped, and each entry is acknowledged once delivered.
   $ redis-cli XADD demo_stream '*' event order.created payload x timestamp 1700000000
   demo-stream-to-processed wrote it to processed_stream, entry ID:
     original_id: ID
     processed_at: TIME
     data: {"event":"order.created","payload":"x","timestamp":"1700000000"}
   demo-stream-to-b made it a job of service B on laravel_database_queues:to-b:
     displayName: App\Jobs\CALLP2
     $data: {"event":"order.created","payload":"x","timestamp":"1700000000"}
   `php artisan queue:work redis --queue=to-b` runs it; no other service's workers see it.

Stopped the router (3 of 3 rules drained) and the redis-server.
Next: `redis-router run -c routes.example.yaml` against your own Redis, and `redis-router test routes.example.yaml` to check the rules offline.
"#
    );
    // Nothing but the story: the rules' lifecycle logs stay out of the way.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // The throwaway server is gone.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis-server still listens on {port}"
    );
}

#[test]
fn without_redis_server_on_path_it_says_what_to_install() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = run_demo(empty.path().to_str());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "redis-router demo: redis-server is not on PATH; install Redis (`apt install redis-server`, `brew install redis`) and run `redis-router demo` again\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(out.status.code(), Some(1));
}
