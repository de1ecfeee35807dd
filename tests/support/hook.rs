//! A real HTTP server inside the test, standing in for a webhook endpoint: records every
//! request and answers from a script (fail, hang, ask to retry later), then with a default.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status and body.
    Body(u16, String),
    /// This status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Wait this long, then 200 (a client with a shorter timeout gives up first).
    Hang(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Recorded>,
}

/// The server; stops when dropped.
pub struct HookServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut g = inner.lock().unwrap();
        g.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        g.script
            .pop_front()
            .or_else(|| g.default.clone())
            .unwrap_or(Reply::Status(200))
    };
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::Body(s, b) => (StatusCode::from_u16(s).unwrap(), b).into_response(),
        Reply::RetryAfter(s, secs) => {
            (StatusCode::from_u16(s).unwrap(), [("Retry-After", secs.to_string())]).into_response()
        }
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

impl HookServer {
    /// Bind 127.0.0.1:0 and serve.
    pub async fn start() -> HookServer {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        HookServer { addr, inner, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Answer with this once the script is used up (200 unless set).
    pub fn set_default(&self, reply: Reply) {
        self.inner.lock().unwrap().default = Some(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Wait until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        super::wait_for(&format!("{n} webhook requests"), super::TIMEOUT, || async {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
