//! No secret leaves the process: one run with a Redis password holding every character a
//! password may (`/ @ # ? % : +`), given as `password:` and percent-encoded in a URL, a webhook
//! URL with userinfo, path and query tokens, an `Authorization` and an API-key header and an
//! HMAC secret. Every output of that run (`check`, `check --acl`, `test`, `run` logged at
//! `trace`, `run --dry-run`, `/`, `/status`, `/metrics`, `/readyz`, the dead letter as stored,
//! `dlq list`, `dlq replay`) is searched for each secret and for raw control characters. And a
//! password with each special character in a URL either works or `check` says how to write it.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

/// The Redis password: every special character, around a marker the test searches for.
const PASSWORD: &str = "pw/@#?%:+PWSECRET";
const HMAC: &str = "HMACSECRET-k3y";
/// Every secret of the run (the password holds the first).
const SECRETS: &[&str] = &[
    "PWSECRET",
    "USERINFOSECRET",
    "PATHSECRET",
    "QUERYSECRET",
    "HEADERSECRET",
    "APIKEYSECRET",
    "HMACSECRET",
];

/// Every byte but letters and digits as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path).await
}

fn router(file: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(router_bin());
    cmd.args(args)
        .arg(file)
        .env("ROUTER_PW", PASSWORD)
        .env("HMAC", HMAC)
        .env_remove("RUST_LOG");
    cmd
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(file: &Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| router(file, args).output().expect("run redis-router"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output() {
    let redis = RedisServer::start();
    let mut admin = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("router")
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    // The endpoint fails with a body that quotes a tokened URL right after a multi-byte
    // character (where masking used to cut a character in two and panic).
    let hook = HookServer::start().await;
    hook.set_default(Reply::Body(
        503,
        "upstream said “http://evil.example/cb?token=QUERYSECRET” — retry".into(),
    ));
    let port = redis.url().rsplit(':').next().unwrap().to_string();
    let hook_url = format!(
        "http://hookuser:USERINFOSECRET@{}/services/T0PATHSECRET/B0PATHSECRET/XPATHSECRETXYZ?token=QUERYSECRET",
        hook.addr
    );
    let listen = free_port();
    let yaml = format!(
        r#"
connections:
  default: {{ url: "redis://127.0.0.1:{port}/0", username: router, password: "${{ROUTER_PW}}" }}
  encoded: {{ url: "redis://router:{encoded}@127.0.0.1:{port}/0" }}
rules:
  - name: to-hook
    source: {{ channel: "in" }}
    on_error: {{ retry: {{ attempts: 2, backoff: 10ms }} }}
    sinks:
      - webhook: "{hook_url}"
        headers: {{ Authorization: "Bearer HEADERSECRET", X-Api-Key: "APIKEYSECRET" }}
        secret: "${{HMAC}}"
      - stream: copied
        connection: encoded
    tests:
      - name: the rendered URL differs
        input: {{ a: 1 }}
        expect:
          sinks:
            - webhook: "{hook_url}"
              url: "http://wrong.example/"
"#,
        encoded = percent_encode(PASSWORD)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();

    let check = run(&file, &["check"]);
    assert!(check.status.success(), "{}", text(&check));
    outputs.push(("check".into(), text(&check)));
    let acl = run(&file, &["check", "--acl"]);
    outputs.push(("check --acl".into(), text(&acl)));
    let test = run(&file, &["test"]);
    assert_eq!(test.status.code(), Some(1), "{}", text(&test));
    assert!(
        text(&test).contains("+ http://hookuser:***@127.0.0.1"),
        "{}",
        text(&test)
    );
    outputs.push(("test".into(), text(&test)));

    // The router, logging everything (its own events and redis-rs's, reqwest's, hyper's), into
    // a file outside the watched directory.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("router.log");
    let mut child = Killed(
        router(&file, &["run", "--listen", &format!("127.0.0.1:{listen}"), "-c"])
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn router"),
    );
    wait_for("the rule to run", TIMEOUT, || async {
        let (status, _) = get(listen, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    let payload = "{\"a\":\"\u{1b}[2J\u{1b}]0;title\u{7}\",\"q\":\"“x” \u{202e}\"}";
    let _: i64 = admin.publish("in", payload).await.unwrap();
    wait_stream_len(&admin, "copied", 1).await;
    let dead = wait_stream_len(&admin, "redis-router:dead-letter", 1).await;
    let sent = hook.wait_requests(2).await;
    // (The URL's userinfo becomes the Authorization header, replacing the configured one.)
    assert!(sent[0].header("authorization").is_some());
    assert_eq!(
        sent[0].header("x-api-key").as_deref(),
        Some("APIKEYSECRET"),
        "the headers were sent"
    );
    assert!(sent[0].header("x-router-signature").is_some());
    let status = wait_for("/status with the last error", TIMEOUT, || async {
        let (code, body) = get(listen, "/status").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let error = v["rules"][0]["last_error"].as_str()?.to_string();
        (code == 200 && error.contains("HTTP 503")).then_some((body, error))
    })
    .await;
    assert!(status.1.contains("“http://evil.example/cb?token=***”"), "{}", status.1);
    outputs.push(("/status".into(), status.0));
    for path in ["/", "/metrics", "/readyz", "/healthz"] {
        let (code, body) = get(listen, path)
            .await
            .unwrap_or_else(|| panic!("{path} answered nothing"));
        assert_eq!(code, 200, "{path}: {body}");
        outputs.push((path.into(), body));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status();
    let exit = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert!(exit.success(), "the router stops cleanly");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("TRACE"), "trace logging was on");
    assert!(logged.contains("Message dead-lettered."));
    outputs.push(("run (RUST_LOG=trace)".into(), logged));

    // What the dead letter holds, every field.
    for (id, fields) in &dead {
        let all: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outputs.push((format!("dead letter {id}"), all.join("\n")));
    }
    let list = run(&file, &["dlq", "list", "-c"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    outputs.push(("dlq list".into(), text(&list)));
    let replay = run(&file, &["dlq", "replay", "-c"]);
    assert!(text(&replay).contains("1 failed again"), "{}", text(&replay));
    outputs.push(("dlq replay".into(), text(&replay)));

    // --dry-run prints what the webhook would be sent.
    let dry_log = logs.path().join("dry.out");
    let mut dry = Killed(
        router(&file, &["run", "--dry-run", "-c"])
            .env("RUST_LOG", "trace")
            .stdout(std::fs::File::create(&dry_log).unwrap())
            .stderr(std::fs::File::create(logs.path().join("dry.err")).unwrap())
            .spawn()
            .expect("spawn dry run"),
    );
    wait_subscribers(&mut admin, "in", 1).await;
    let _: i64 = admin.publish("in", payload).await.unwrap();
    let printed = wait_for("the dry run's webhook line", TIMEOUT, || async {
        let out = std::fs::read_to_string(&dry_log).ok()?;
        out.lines().any(|l| l.contains("POST")).then_some(out)
    })
    .await;
    let _ = Command::new("kill").arg("-TERM").arg(dry.0.id().to_string()).status();
    tokio::task::block_in_place(|| dry.0.wait()).unwrap();
    outputs.push(("run --dry-run (stdout)".into(), printed));
    outputs.push((
        "run --dry-run (log)".into(),
        std::fs::read_to_string(logs.path().join("dry.err")).unwrap(),
    ));

    let mut leaks = Vec::new();
    for (what, out) in &outputs {
        for secret in SECRETS {
            if let Some(line) = out.lines().find(|l| l.contains(secret)) {
                leaks.push(format!("{what} shows {secret}: {line}"));
            }
        }
        // A dead letter keeps the payload as it came (the message, to be replayed byte for
        // byte); every other field and output is text for people, escaped.
        let shown = out
            .lines()
            .filter(|l| !(what.starts_with("dead letter") && l.starts_with("payload=")));
        if let Some(line) = shown.into_iter().find(|l| l.contains(['\u{1b}', '\u{7}', '\u{202e}'])) {
            leaks.push(format!("{what} prints a raw control character: {line:?}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_with_each_special_character_works_or_check_says_how_to_write_it() {
    let redis = RedisServer::start();
    let mut admin = redis.conn().await;
    let port = redis.url().rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut refused = Vec::new();
    for (i, c) in ['/', '@', '#', '?', '%', ':', '+'].into_iter().enumerate() {
        let marker = format!("SECRET{i}");
        let password = format!("p{c}{marker}{c}x");
        let user = format!("u{i}");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .unwrap();
        let forms = [
            (
                "raw in the URL",
                format!("url: \"redis://{user}:{password}@127.0.0.1:{port}/0\""),
            ),
            (
                "percent-encoded in the URL",
                format!(
                    "url: \"redis://{user}:{}@127.0.0.1:{port}/0\"",
                    percent_encode(&password)
                ),
            ),
            (
                "as password:",
                format!("url: \"redis://127.0.0.1:{port}/0\", username: {user}, password: '{password}'"),
            ),
        ];
        for (form, connection) in forms {
            let file = dir.path().join(format!("r{i}.yaml"));
            std::fs::write(
                &file,
                format!(
                    "connections:\n  default: {{ {connection} }}\nrules:\n  - name: r\n    source: {{ channel: in }}\n    sinks: [ {{ publish: out }} ]\n"
                ),
            )
            .unwrap();
            let check = run(&file, &["check"]);
            let out = text(&check);
            assert!(!out.contains(&marker), "`{c}` {form}: check shows the password:\n{out}");
            if check.status.success() {
                // It works: the router authenticates with it (dlq reads the dead letters).
                let list = run(&file, &["dlq", "list", "-c"]);
                let out = text(&list);
                assert!(
                    list.status.success(),
                    "`{c}` {form}: check passed but it does not connect:\n{out}"
                );
                assert!(!out.contains(&marker), "`{c}` {form}: dlq shows the password:\n{out}");
            } else {
                assert_eq!(form, "raw in the URL", "`{c}` {form} must work:\n{out}");
                assert_eq!(check.status.code(), Some(78), "{out}");
                assert!(
                    out.contains(&format!("{}:2:", file.display()))
                        && out.contains("percent-encode")
                        && out.contains("password:"),
                    "`{c}`: check says where and how:\n{out}"
                );
                refused.push(c);
            }
        }
    }
    assert_eq!(
        refused,
        ['/', '#', '?'],
        "only the characters that end a URL's userinfo need encoding"
    );
}
