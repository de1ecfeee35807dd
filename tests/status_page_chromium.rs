//! The status page in headless Chromium (Debian's chromium): it shows the running router's rules
//! with the numbers `/status` gives, a throughput picture that moves under traffic, the last dead
//! letters and the reloads with what changed. Saves a screenshot next to the test binaries
//! (`target/tmp/status-page.png`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: orders-to-stream
    source: { channel: "events:order" }
    sinks: [ { stream: "processed_stream" } ]
  - name: copy
    source: { stream: "in", group: g, start: oldest, block: 100ms }
    sinks: [ { stream: "out" } ]
  - name: jobs
    source: { queue: "jobs", block: 100ms }
    filter: "@.ok == true"
    sinks: [ { stream: "done" } ]
"#;

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("chromium not found: scripts/test.sh installs Debian's chromium package");
}

/// Run headless Chromium on `url` with `extra` arguments; returns its standard output.
fn headless(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The points of the `class` line of the throughput picture in the row of `rule`.
fn polyline(dom: &str, rule: &str, class: &str) -> String {
    let row = dom
        .split(&format!("data-rule=\"{rule}\""))
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    row.split(&format!("<polyline class=\"{class}\" points=\""))
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap_or_else(|| panic!("no {class} line for {rule}: {row}"))
        .to_string()
}

/// The text of the cell with class `class` in the row of `rule`, from a DOM dump.
fn cell(dom: &str, rule: &str, class: &str) -> Option<u64> {
    let row = dom
        .split(&format!("data-rule=\"{rule}\""))
        .nth(1)?
        .split("</tr>")
        .next()?;
    let after = row.split(&format!("class=\"num {class}\">")).nth(1)?;
    after.split('<').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_rules_and_live_numbers() {
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let router = RouterProcess::start_with(RULES, &redis.url(), &["--listen", &listen, "--reload-debounce", "1h"]);
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events:order", 1).await;
    wait_group(&mut conn, "in", "g").await;
    let url = format!("http://{listen}/");

    for i in 0..3 {
        let _: String = conn.xadd("in", "*", &[("i", i.to_string())]).await.unwrap();
    }
    wait_stream_len(&conn, "out", 3).await;
    let dom = tokio::task::block_in_place(|| headless(&url, &["--dump-dom"]));
    assert!(
        dom.contains("orders-to-stream") && dom.contains("channel events:order → stream processed_stream"),
        "{dom}"
    );
    assert_eq!(cell(&dom, "copy", "delivered"), Some(3), "{dom}");
    assert_eq!(cell(&dom, "orders-to-stream", "received"), Some(0), "{dom}");

    for i in 0..5 {
        let _: String = conn.xadd("in", "*", &[("i", i.to_string())]).await.unwrap();
        let _: i64 = conn.publish("events:order", format!(r#"{{"n":{i}}}"#)).await.unwrap();
    }
    wait_stream_len(&conn, "out", 8).await;
    wait_stream_len(&conn, "processed_stream", 5).await;
    let dom = tokio::task::block_in_place(|| headless(&url, &["--dump-dom"]));
    assert_eq!(
        cell(&dom, "copy", "delivered"),
        Some(8),
        "the numbers follow the traffic: {dom}"
    );
    assert_eq!(cell(&dom, "orders-to-stream", "received"), Some(5), "{dom}");

    // The same numbers as `/status`.
    let (_, status) = http_get(port, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    for rule in status["rules"].as_array().unwrap() {
        let name = rule["name"].as_str().unwrap();
        for class in ["received", "delivered"] {
            assert_eq!(
                cell(&dom, name, class),
                rule["counters"][class].as_u64(),
                "{name} {class}: the page and /status agree"
            );
        }
    }

    // The throughput picture moves: two samples with traffic between them draw a line that
    // rises off the floor.
    let samples = |n: usize| async move {
        let (_, h) = http_get(port, "/history").await?;
        let h: serde_json::Value = serde_json::from_str(&h).ok()?;
        (h["rules"]["copy"].as_array()?.len() >= n).then_some(())
    };
    wait_for("two samples", TIMEOUT, || samples(2)).await;
    let before = polyline(
        &tokio::task::block_in_place(|| headless(&url, &["--dump-dom"])),
        "copy",
        "delivered",
    );
    let have = {
        let (_, h) = http_get(port, "/history").await.unwrap();
        let h: serde_json::Value = serde_json::from_str(&h).unwrap();
        h["rules"]["copy"].as_array().unwrap().len()
    };
    for i in 0..50 {
        let _: String = conn.xadd("in", "*", &[("i", i.to_string())]).await.unwrap();
    }
    wait_stream_len(&conn, "out", 58).await;
    wait_for("a sample after the traffic", TIMEOUT, || samples((have + 1).min(60))).await;
    let dom = tokio::task::block_in_place(|| headless(&url, &["--dump-dom"]));
    let after = polyline(&dom, "copy", "delivered");
    assert_ne!(before, after, "the line moved");
    let last_y: f64 = after
        .split_whitespace()
        .last()
        .and_then(|p| p.split(',').nth(1))
        .and_then(|y| y.parse().ok())
        .unwrap();
    assert!(
        last_y < 27.0,
        "the last point is above the floor (a rate above zero): {after}"
    );

    // A dead letter and a reload show up with what they were.
    let _: i64 = conn.rpush("jobs", "not json").await.unwrap();
    let _: i64 = conn.rpush("jobs", r#"{"ok":true}"#).await.unwrap();
    wait_stream_len(&conn, "done", 1).await;
    std::fs::write(
        &router.file,
        format!("{RULES}  - name: extra\n    source: {{ channel: x }}\n    sinks: [ {{ stream: y }} ]\n"),
    )
    .unwrap();
    router.signal("HUP");
    router
        .wait_line("the reload", &["Rules reloaded.", " generation=2 "])
        .await;
    let dom = tokio::task::block_in_place(|| headless(&url, &["--dump-dom"]));
    let dead = dom.split("id=\"dead\"").nth(1).unwrap().split("</ul>").next().unwrap();
    assert!(
        dead.contains("<b>jobs</b>") && dead.contains("payload is not JSON") && dead.contains("not json"),
        "{dead}"
    );
    let reloads = dom
        .split("id=\"reloads\"")
        .nth(1)
        .unwrap()
        .split("</ul>")
        .next()
        .unwrap();
    assert!(
        reloads.contains("applied") && reloads.contains("generation 2") && reloads.contains("added: extra"),
        "{reloads}"
    );
    assert!(dom.contains("data-rule=\"extra\""), "the new rule has its row");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::block_in_place(|| {
        headless(
            &url,
            &[&format!("--screenshot={}", shot.display()), "--window-size=1400,760"],
        )
    });
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot: {} bytes",
        png.len()
    );
}
