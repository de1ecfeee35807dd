//! Dead letters are kept whole and replayed only when they can be trusted: `dlq replay` never
//! sends a cut, corrupted, unsigned or forged entry (it keeps each and says why), `dlq list`
//! escapes what it prints, and both page through a stream of 80 MB in bounded memory.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

const DEAD: &str = "redis-router:dead-letter";

fn rules(hook: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: to-hook
    source: {{ stream: "orders", group: router, start: oldest, batch: 20, block: 100ms }}
    on_error: {{ retry: {{ attempts: 1 }} }}
    sinks:
      - webhook: "{hook}"
        name: orders-hook
  - name: capped
    source: {{ stream: "capped-in", group: router, start: oldest, batch: 20, block: 100ms }}
    on_error: {{ retry: {{ attempts: 1 }}, dead_letter: "capped-dead", dead_letter_max_payload: 1000 }}
    sinks:
      - webhook: "{hook}"
        name: capped-hook
"#
    )
}

/// One rule and its webhook, in the rule file's oldest form (no `name`, whole payloads).
fn plain_rules(hook: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: to-hook
    source: {{ stream: "orders", group: router, start: oldest, batch: 20, block: 100ms }}
    sinks:
      - webhook: "{hook}"
"#
    )
}

/// `redis-router dlq ARGS -c FILE` with `REDIS_URL=url`.
fn dlq(file: &Path, url: &str, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(router_bin())
            .arg("dlq")
            .args(args)
            .arg("-c")
            .arg(file)
            .env("REDIS_URL", url)
            .output()
            .expect("run redis-router dlq")
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn n_of(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["n"].as_str()?.parse().ok()
}

/// A dead letter's fields, as Redis holds them.
async fn fields_of(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: u64) -> Vec<(String, Vec<u8>)> {
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(stream).await.unwrap();
    for e in entries.ids {
        let fields: Vec<(String, Vec<u8>)> = e
            .map
            .iter()
            .map(|(k, v)| (k.clone(), redis::from_redis_value_ref::<Vec<u8>>(v).unwrap()))
            .collect();
        let payload = fields.iter().find(|(k, _)| k == "payload").map(|(_, v)| v.clone());
        if payload.as_deref().and_then(n_of) == Some(n) {
            return fields;
        }
    }
    panic!("no dead letter with n={n} in {stream}");
}

async fn xadd_fields(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    fields: &[(String, Vec<u8>)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query_async(conn).await.unwrap()
}

fn with(fields: &[(String, Vec<u8>)], name: &str, value: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fields.iter().filter(|(k, _)| k != name).cloned().collect();
    out.push((name.to_string(), value.to_vec()));
    out
}

fn without(fields: &[(String, Vec<u8>)], name: &str) -> Vec<(String, Vec<u8>)> {
    fields.iter().filter(|(k, _)| k != name).cloned().collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_whole_signed_dead_letters_and_keeps_cut_corrupted_and_forged_ones() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Status(503));
    let mut conn = redis.conn().await;
    let yaml = rules(&hook.url("/h"));
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    // A 1.5 MiB payload (above the old 1 MiB cut; the test's receiver takes up to 2 MB) and
    // small ones; the capped rule cuts at 1000 bytes.
    let big = "x".repeat(1536 * 1024);
    let _: String = conn
        .xadd("orders", "*", &[("n", "0"), ("pad", big.as_str())])
        .await
        .unwrap();
    let _: String = conn.xadd("orders", "*", &[("n", "1")]).await.unwrap();
    let _: String = conn.xadd("orders", "*", &[("n", "2")]).await.unwrap();
    let _: String = conn
        .xadd("capped-in", "*", &[("n", "3"), ("pad", &"y".repeat(5000))])
        .await
        .unwrap();
    let _: String = conn.xadd("capped-in", "*", &[("n", "4")]).await.unwrap();
    wait_stream_len(&conn, DEAD, 3).await;
    wait_stream_len(&conn, "capped-dead", 2).await;
    daemon.stop().await;

    let whole = fields_of(&mut conn, DEAD, 0).await;
    let payload = whole
        .iter()
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(payload.len() > big.len(), "the dead letter keeps the whole payload");
    assert!(!whole.iter().any(|(k, _)| k == "payload_truncated_from"));
    assert!(
        whole.iter().any(|(k, v)| k == "sink" && v.as_slice() == b"orders-hook"),
        "the sink is named by its name"
    );

    // Tampering, each kind once, each an entry of to-hook's own stream.
    let small = fields_of(&mut conn, DEAD, 1).await;
    let forged_payload = br#"{"n":"666"}"#;
    let edited = with(
        &with(
            &with(&small, "payload", forged_payload),
            "payload_sha256",
            sha256_hex(forged_payload).as_bytes(),
        ),
        "payload_len",
        forged_payload.len().to_string().as_bytes(),
    );
    let mut expect_kept = Vec::new();
    expect_kept.push((xadd_fields(&mut conn, DEAD, &edited).await, "forged or edited"));
    let corrupted = with(&small, "payload", br#"{"n":"667"}"#);
    expect_kept.push((xadd_fields(&mut conn, DEAD, &corrupted).await, "corrupted"));
    let shortened = with(&small, "payload", br#"{"n""#);
    expect_kept.push((xadd_fields(&mut conn, DEAD, &shortened).await, "payload cut"));
    expect_kept.push((
        xadd_fields(&mut conn, DEAD, &without(&small, "payload")).await,
        "corrupted: no `payload` field",
    ));
    let unsigned = without(
        &without(&without(&edited, "signature"), "payload_len"),
        "payload_sha256",
    );
    let unsigned_id = xadd_fields(&mut conn, DEAD, &unsigned).await;
    expect_kept.push((unsigned_id.clone(), "unsigned"));
    // The capped rule's small dead letter, signed for its own stream, copied into to-hook's.
    let moved = with(&fields_of(&mut conn, "capped-dead", 4).await, "rule", b"to-hook");
    expect_kept.push((xadd_fields(&mut conn, DEAD, &moved).await, "forged or edited"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &yaml).unwrap();
    hook.set_default(Reply::Status(200));
    let before = hook.requests().len();
    let replay = dlq(&file, &redis.url(), &["replay"]);
    let out = text(&replay);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "refused entries make replay fail:\n{out}"
    );
    let sent = hook.requests()[before..].to_vec();
    let got: BTreeSet<u64> = sent.iter().filter_map(|r| n_of(&r.body)).collect();
    assert_eq!(
        got,
        BTreeSet::from([0, 1, 2, 4]),
        "only the whole, signed dead letters are sent:\n{out}"
    );
    assert_eq!(sent.len(), 4, "{out}");
    let n0 = sent.iter().find(|r| n_of(&r.body) == Some(0)).unwrap();
    assert_eq!(n0.body, payload, "the 1.5 MiB payload is sent whole");
    for (id, why) in &expect_kept {
        let line = out
            .lines()
            .find(|l| l.starts_with("kept ") && l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no kept line for {id} ({why}):\n{out}"));
        assert!(line.contains(why), "{id} should be kept as {why}: {line}");
    }
    let cut_line = out
        .lines()
        .find(|l| l.starts_with("kept capped-dead ") && l.contains("payload cut: 1000 of"))
        .unwrap_or_else(|| panic!("the capped rule's cut dead letter is kept:\n{out}"));
    assert!(cut_line.contains("rule=capped"), "{cut_line}");
    assert!(
        out.contains("4 replayed, 0 failed again (kept), 0 skipped (not sink failures, kept), 7 refused"),
        "{out}"
    );
    let left: usize = conn.xlen(DEAD).await.unwrap();
    assert_eq!(left, expect_kept.len(), "every refused entry is still there");
    let left_capped: usize = conn.xlen("capped-dead").await.unwrap();
    assert_eq!(left_capped, 1, "the cut one stays");

    // An old, unsigned dead letter is replayed when asked for by id and accepted.
    let again = dlq(
        &file,
        &redis.url(),
        &["replay", "--accept-unsigned", "--id", &unsigned_id],
    );
    assert!(again.status.success(), "{}", text(&again));
    let last = hook.requests().last().cloned().unwrap();
    assert_eq!(n_of(&last.body), Some(666));
    let left: usize = conn.xlen(DEAD).await.unwrap();
    assert_eq!(left, expect_kept.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_replay_escape_control_characters_in_every_field() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    let mut conn = redis.conn().await;
    let yaml = plain_rules(&hook.url("/h"));
    let hostile: Vec<(String, Vec<u8>)> = vec![
        ("rule".into(), b"to-hook".to_vec()),
        ("reason".into(), b"bad\r\x1b[2K".to_vec()),
        ("source".into(), b"stream".to_vec()),
        ("source_key".into(), b"orders".to_vec()),
        ("source_id".into(), b"1-0\x1b[1A".to_vec()),
        (
            "payload".into(),
            b"{\"a\":\"\x1b[2J\x1b]0;owned\x07\xe2\x80\xae\"}".to_vec(),
        ),
        ("sink".into(), b"orders-hook\x1b[31m".to_vec()),
        ("error".into(), b"HTTP 500: \x1b[2J\nfake line".to_vec()),
    ];
    xadd_fields(&mut conn, DEAD, &hostile).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &yaml).unwrap();
    for args in [&["list"][..], &["replay"][..]] {
        let out = dlq(&file, &redis.url(), args);
        let printed = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        let raw: Vec<u8> = printed
            .iter()
            .copied()
            .filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
            .collect();
        assert!(
            raw.is_empty(),
            "{args:?} printed control bytes {raw:?}:\n{}",
            text(&out)
        );
        let s = text(&out);
        assert!(!s.contains('\u{202e}'), "{s}");
    }
    let list = text(&dlq(&file, &redis.url(), &["list"]));
    assert_eq!(
        list.lines().filter(|l| l.contains("fake line")).count(),
        1,
        "a newline in a field cannot start a line of its own:\n{list}"
    );
    assert!(list.contains("\\u{1b}[2J"), "the escape is shown escaped:\n{list}");
    assert!(list.contains("not_replayable=\"unsigned"), "{list}");
}

/// VmHWM (KiB) of a running process.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run `redis-router dlq ARGS`, reading its output as it comes, and sample its peak resident
/// memory until it exits: (exit code, stdout lines, peak VmHWM in KiB).
fn dlq_peak(file: &Path, url: &str, args: &[&str]) -> (Option<i32>, usize, u64) {
    let mut child = Command::new(router_bin())
        .arg("dlq")
        .args(args)
        .arg("-c")
        .arg(file)
        .env("REDIS_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dlq");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf.iter().filter(|&&b| b == b'\n').count()
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut peak = 0;
    let code = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dlq {args:?} did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (code, reader.join().unwrap(), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_pages_through_a_large_dead_letter_stream_in_bounded_memory() {
    // 20,000 dead letters of 4 KB: 80 MB in the stream, which the previous release read whole
    // (over 300 MB of memory), against pages of at most 8 MiB now.
    const N: usize = 20_000;
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let payload = format!("{{\"n\":\"x\",\"pad\":\"{}\"}}", "p".repeat(4000));
    for chunk in 0..N / 1000 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("XADD")
                .arg(DEAD)
                .arg("*")
                .arg("rule")
                .arg("to-hook")
                .arg("reason")
                .arg("sink failed 1 times")
                .arg("source")
                .arg("stream")
                .arg("source_id")
                .arg(format!("{}-0", chunk * 1000 + i))
                .arg("payload")
                .arg(&payload)
                .arg("sink")
                .arg("webhook http://127.0.0.1:9/h")
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let last: redis::streams::StreamRangeReply = conn.xrevrange_count(DEAD, "+", "-", 1).await.unwrap();
    let last_id = last.ids[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, plain_rules("http://127.0.0.1:9/h")).unwrap();

    let (code, lines, list_kib) = dlq_peak(&file, &redis.url(), &["list"]);
    assert_eq!(code, Some(0));
    assert_eq!(lines, N, "every dead letter listed");
    // Unsigned entries: replay looks at every one, sends none, keeps all.
    let (code, lines, replay_kib) = dlq_peak(&file, &redis.url(), &["replay"]);
    assert_eq!(code, Some(1));
    assert_eq!(lines, N + 1, "one kept line per entry and the summary");
    let (code, lines, id_kib) = dlq_peak(&file, &redis.url(), &["replay", "--id", &last_id]);
    assert_eq!(code, Some(1));
    assert_eq!(lines, 2, "the one entry asked for, and the summary");
    eprintln!(
        "VmHWM over {N} dead letters of {} bytes: list {list_kib} KiB, replay {replay_kib} KiB, replay --id {id_kib} KiB",
        payload.len()
    );
    // The stream holds about 80 MB of payloads; a page is at most 1,000 entries or 8 MiB.
    for (what, kib) in [("list", list_kib), ("replay", replay_kib), ("replay --id", id_kib)] {
        assert!(kib < 40 * 1024, "dlq {what} peaked at {kib} KiB");
    }
    let left: usize = conn.xlen(DEAD).await.unwrap();
    assert_eq!(left, N, "nothing deleted");
}
