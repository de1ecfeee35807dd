//! Numbers leave the router exactly as they came, whatever reads them: a filter, a transform, a
//! template in a field, a body, a key. Integers beyond 64 bits, decimals with trailing zeros and
//! `-0` are not rounded through a float (`123456789012345678901234567890` must not come out as
//! `1.2345678901234568e29`, which would also collapse many ids onto one key). The one change
//! JSON allows itself: an exponent is written with its sign (`1e400` → `1e+400`), the same value.

mod support;

use redis::AsyncCommands;
use support::hook::HookServer;
use support::*;

const BIG: &str = "123456789012345678901234567890";
const PAYLOAD: &str =
    r#"{"id":123456789012345678901234567890,"data":{"big":-98765432109876543210,"price":1.10,"zero":-0,"e":1e400}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_and_odd_numbers_pass_through_filters_transforms_and_templates_unchanged() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: as-is
    source: {{ channel: numbers }}
    filter: "@.id > 1000"
    sinks:
      - stream: "by-id:{{{{$.id}}}}"
        fields: {{ id: "{{{{$.id}}}}", data: "{{{{$.data}}}}", whole: "{{{{$}}}}" }}
      - webhook: "{}"
        body: '{{"data":{{{{$.data}}}},"id":{{{{$.id}}}}}}'
  - name: reshaped
    source: {{ channel: numbers }}
    transform: {{ id: "$.id", big: "$.data.big", price: "$.data.price", zero: "$.data.zero", e: "$.data.e" }}
    sinks:
      - {{ publish: "reshaped:{{{{$.id}}}}" }}
      - {{ stream: reshaped }}
"#,
        hook.url("/n")
    );
    let router = RouterProcess::start(&yaml, &redis.url());
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "numbers", 1).await;
    router.wait_rules_started(&["as-is", "reshaped"]).await;
    let mut listener = redis.client().get_async_pubsub().await.unwrap();
    listener.subscribe(format!("reshaped:{BIG}")).await.unwrap();
    let _: i64 = conn.publish("numbers", PAYLOAD).await.unwrap();

    let key = format!("by-id:{BIG}");
    let entries = wait_stream_len(&conn, &key, 1).await;
    let field = |name: &str| field(&entries[0].1, name);
    assert_eq!(field("id"), BIG);
    assert_eq!(
        field("data"),
        r#"{"big":-98765432109876543210,"price":1.10,"zero":-0,"e":1e+400}"#
    );
    assert_eq!(field("whole"), PAYLOAD, "{{$}} is the bytes as received");

    let requests = hook.wait_requests(1).await;
    assert_eq!(
        requests[0].body_str(),
        r#"{"data":{"big":-98765432109876543210,"price":1.10,"zero":-0,"e":1e+400},"id":123456789012345678901234567890}"#
    );

    let reshaped = wait_stream_len(&conn, "reshaped", 1).await;
    // (`xrange` gives fields sorted by name.)
    let want = [
        ("big", "-98765432109876543210"),
        ("e", "1e+400"),
        ("id", BIG),
        ("price", "1.10"),
        ("zero", "-0"),
    ];
    let got: Vec<(&str, &str)> = reshaped[0].1.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want, "a transform keeps each number's text");
    let published = within(futures_util::StreamExt::next(&mut listener.on_message()))
        .await
        .unwrap();
    let body: String = published.get_payload().unwrap();
    assert_eq!(
        body,
        r#"{"id":123456789012345678901234567890,"big":-98765432109876543210,"price":1.10,"zero":-0,"e":1e+400}"#
    );
    drop(router);
}
