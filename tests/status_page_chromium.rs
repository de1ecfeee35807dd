//! The status page in headless Chromium (Debian's chromium): it shows the running router's rules,
//! and its numbers change as traffic flows. Saves a screenshot next to the test binaries
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
    let _router = RouterProcess::start_with(RULES, &redis.url(), &["--listen", &listen]);
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

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::block_in_place(|| {
        headless(
            &url,
            &[&format!("--screenshot={}", shot.display()), "--window-size=1200,420"],
        )
    });
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot: {} bytes",
        png.len()
    );
}
