//! A `rediss://` connection with a CA file and a client certificate, against a redis-server
//! that requires TLS client authentication.

mod support;

use std::path::Path;
use std::process::Command;

use redis::AsyncCommands;
use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    // Extensions make X.509 v3 certificates; rustls refuses v1 ones.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let csr = format!("{name}.csr");
        let out = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &out,
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_certs(dir);
    let tls_port = free_port();
    let p = |f: &str| dir.join(f).display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        p("server.crt"),
        "--tls-key-file".into(),
        p("server.key"),
        "--tls-ca-cert-file".into(),
        p("ca.crt"),
        "--tls-auth-clients".into(),
        "yes".into(),
    ]);
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
  secure:
    url: "rediss://127.0.0.1:{tls_port}"
    tls: {{ ca_file: "{}", cert_file: "{}", key_file: "{}" }}
rules:
  - name: over-tls
    source: {{ channel: "secure-in", connection: secure }}
    sinks: [ {{ stream: "secure-out", connection: secure }} ]
"#,
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    );
    let router = RouterProcess::start(&yaml, &redis.url());
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "secure-in", 1).await;
    let _: i64 = conn.publish("secure-in", r#"{"over":"tls"}"#).await.unwrap();
    let out = wait_stream_len(&conn, "secure-out", 1).await;
    assert_eq!(out[0].1, vec![("over".to_string(), "tls".to_string())]);
    // The router's connections are TLS ones: the server counts them on its TLS port.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    assert!(
        clients
            .lines()
            .filter(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port}")))
            .count()
            >= 2,
        "{clients}"
    );
    drop(router);
}
