//! `check --acl` prints the ACL rule the example file needs; the router runs as that user, and
//! that user can touch nothing else.

mod support;

use std::process::Command;

use redis::AsyncCommands;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_works_as_the_printed_acl_user_and_nothing_more() {
    let redis = RedisServer::start();
    let mut admin = redis.conn().await;
    let out = Command::new(router_bin())
        .args(["check", "--acl", "routes.example.yaml"])
        .current_dir(repo_root())
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let setusers: Vec<&str> = text.lines().filter(|l| l.starts_with("ACL SETUSER ")).collect();
    assert_eq!(setusers.len(), 1, "one server, one user: {text}");
    let args: Vec<String> = setusers[0]
        .split(' ')
        .skip(2)
        .map(|a| {
            if a == ">CHANGE-ME" {
                ">router-pw".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&args)
        .query_async(&mut admin)
        .await
        .unwrap();
    // New connections can no longer log in as `default`: the router must use its own user.
    // (The test's own connection stays logged in.)
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("off")
        .query_async(&mut admin)
        .await
        .unwrap();

    let url = format!("redis://redis-router:router-pw@127.0.0.1:{}", redis.port);
    // The router's own file gives the password through `password_file`, not the URL.
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("redis-password");
    std::fs::write(&password_file, "router-pw\n").unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("routes.example.yaml"))
        .unwrap()
        .replace(
            r#"default: { url: "${REDIS_URL:-redis://127.0.0.1:6379}" }"#,
            &format!(r#"default: {{ url: "${{REDIS_URL}}", username: redis-router, password_file: "{}" }}"#, password_file.display()),
        )
        .replace(
            r#"laravel: { url: "${REDIS_URL:-redis://127.0.0.1:6379}", prefix: "laravel_database_" }"#,
            &format!(
                r#"laravel: {{ url: "${{REDIS_URL}}", prefix: "laravel_database_", username: redis-router, password_file: "{}" }}"#,
                password_file.display()
            ),
        );
    assert_eq!(yaml.matches("password_file").count(), 2, "{yaml}");
    let router = RouterProcess::start(&yaml, &redis.url());
    wait_subscribers(&mut admin, "events:order", 1).await;
    wait_group(&mut admin, "demo_stream", "to-b").await;
    let _: i64 = admin
        .publish(
            "events:order",
            r#"{"event":"order.created","data":{"order_id":1,"total":100000}}"#,
        )
        .await
        .unwrap();
    let _: i64 = admin.publish("events:order", "not json").await.unwrap();
    let _: String = admin
        .xadd(
            "demo_stream",
            "*",
            &[("event", "e"), ("payload", "p"), ("timestamp", "1")],
        )
        .await
        .unwrap();
    wait_stream_len(&admin, "processed_stream", 2).await;
    wait_stream_len(&admin, "redis-router:dead-letter", 1).await;
    wait_for("a job for B", TIMEOUT, || {
        let mut admin = admin.clone();
        async move {
            let n: usize = admin.llen("laravel_database_queues:to-b").await.ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let log = router.log();
    assert!(
        !log.contains("NOPERM"),
        "the router had every permission it needed:\n{log}"
    );

    let as_router = redis::Client::open(url.as_str()).unwrap();
    let mut conn = within(as_router.get_multiplexed_async_connection()).await.unwrap();
    let denied: Vec<(&str, redis::RedisResult<redis::Value>)> = vec![
        (
            "SET",
            redis::cmd("SET").arg("other").arg(1).query_async(&mut conn).await,
        ),
        (
            "XADD",
            redis::cmd("XADD")
                .arg("other-stream")
                .arg("*")
                .arg("a")
                .arg("b")
                .query_async(&mut conn)
                .await,
        ),
        (
            "PUBLISH",
            redis::cmd("PUBLISH")
                .arg("other-channel")
                .arg("x")
                .query_async(&mut conn)
                .await,
        ),
        (
            "DEL",
            redis::cmd("DEL").arg("processed_stream").query_async(&mut conn).await,
        ),
        ("FLUSHALL", redis::cmd("FLUSHALL").query_async(&mut conn).await),
        ("KEYS", redis::cmd("KEYS").arg("*").query_async(&mut conn).await),
    ];
    for (what, result) in denied {
        let err = result.expect_err(what);
        assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
    }
}
