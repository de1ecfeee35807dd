//! SIGHUP reloads the rule file through the same step as the watcher: a changed file applies
//! with one INFO line, an unchanged one still gets an answer in the log, an invalid one is
//! rejected with its position. The watcher's debounce is set to an hour here, so that only the
//! signal can be what reloaded.

mod support;

use support::*;

fn rules(names: &[&str]) -> String {
    let mut out = String::from("connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n");
    for name in names {
        out.push_str(&format!(
            "  - name: {name}\n    source: {{ channel: \"in:{name}\" }}\n    sinks: [ {{ stream: \"out:{name}\" }} ]\n"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_through_the_same_step() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let router = RouterProcess::start_with(&rules(&["a"]), &redis.url(), &["--reload-debounce", "1h"]);
    router.wait_line("the router to start", &["Router started."]).await;
    wait_subscribers(&mut conn, "in:a", 1).await;

    std::fs::write(&router.file, rules(&["a", "b"])).unwrap();
    router.signal("HUP");
    let line = router
        .wait_line("the reload", &["Rules reloaded.", " generation=2 "])
        .await;
    assert!(line.contains(" trigger=signal "), "{line}");
    assert!(line.contains(r#" added=["b"] "#), "{line}");
    wait_subscribers(&mut conn, "in:b", 1).await;

    // Nothing changed: the signal still gets its line, but nothing is applied, the generation
    // stays and the reload counts as unchanged.
    router.signal("HUP");
    let line = router
        .wait_line(
            "the answer to the second signal",
            &["Rule file unchanged; nothing to reload."],
        )
        .await;
    assert!(
        line.contains(" generation=2 ") && line.contains(" trigger=signal"),
        "{line}"
    );

    // Invalid: rejected with its position, generation stays.
    let good = rules(&["a", "b"]);
    std::fs::write(&router.file, good.replace("name: b", "nme: b")).unwrap();
    router.signal("HUP");
    let rejected = router
        .wait_line("the rejection", &["Reload rejected; the running rules stay."])
        .await;
    assert!(rejected.contains(" generation=2"), "{rejected}");
    let file = router.file.display().to_string();
    let log = router.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&format!("{file}:7:5: "))),
        "the mistake is reported at line 7 column 5:\n{log}"
    );

    // The fix puts back what runs: unchanged again, not a new generation.
    std::fs::write(&router.file, &good).unwrap();
    router.signal("HUP");
    wait_for("the answer to the fix", TIMEOUT, || async {
        (router.count("Rule file unchanged; nothing to reload.") == 2).then_some(())
    })
    .await;
    let log = router.log();
    assert_eq!(log.matches("Rules reloaded.").count(), 1, "{log}");
    assert!(!log.contains("generation=3"), "{log}");
}
