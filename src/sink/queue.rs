//! `queue` sink: RPUSH onto a list, or push a job that an unmodified Laravel worker runs.
//!
//! A Laravel push is one EVAL of the same two RPUSHes Laravel's own `RedisQueue::pushRaw`
//! does (the job onto `queues:<q>`, a `1` onto `queues:<q>:notify`), so both happen or neither.
//! A delayed job goes to the `queues:<q>:delayed` sorted set, scored by when it is due, with no
//! notify entry (QUEUE-FORMAT.md §2).

use std::time::{SystemTime, UNIX_EPOCH};

use redis::Cmd;

use crate::config::{ConnectionSpec, LaravelSinkSpec};
use crate::filter::{EvalError, Missing, Template};
use crate::laravel;
use crate::message::Message;
use crate::redis_conn;

/// Laravel's push: the job, then one notify entry, atomically.
const LARAVEL_PUSH: &str = "redis.call('rpush', KEYS[1], ARGV[1])\nredis.call('rpush', KEYS[2], 1)";

/// The command that puts `msg` on the queue `name` (rendered).
pub(super) fn render(
    conn: &ConnectionSpec,
    name: &str,
    body: Option<&Template>,
    laravel: Option<&LaravelSinkSpec>,
    msg: &Message,
) -> Result<Cmd, EvalError> {
    let Some(spec) = laravel else {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(redis_conn::prefixed(conn, name));
        match body {
            Some(t) => cmd.arg(t.render(msg, Missing::Empty)?),
            None => cmd.arg(msg.raw()),
        };
        return Ok(cmd);
    };
    let payload = match &spec.target {
        Some(target) => job_payload(target, spec, name, msg.json()?),
        // Forwarded: the same bytes, so the job keeps its uuid and attempts.
        None => msg.raw().to_vec(),
    };
    let key = redis_conn::prefixed(conn, &laravel::queue_key(name, spec.hash_tag));
    let mut cmd;
    match spec.delay {
        Some(delay) => {
            let due = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(delay)
                .as_secs();
            cmd = redis::cmd("ZADD");
            cmd.arg(redis_conn::companion(conn, &key, ":delayed"))
                .arg(due)
                .arg(payload);
        }
        None => {
            cmd = redis::cmd("EVAL");
            cmd.arg(LARAVEL_PUSH)
                .arg(2)
                .arg(&key)
                .arg(redis_conn::companion(conn, &key, ":notify"))
                .arg(payload);
        }
    }
    Ok(cmd)
}

/// A fresh job (new uuid and id) carrying `data`.
fn job_payload(target: &laravel::JobTarget, spec: &LaravelSinkSpec, queue: &str, data: &serde_json::Value) -> Vec<u8> {
    let opts = laravel::JobOptions {
        tries: spec.tries,
        timeout: spec.timeout,
        backoff: spec.backoff.clone(),
        retry_until: None,
        queue: queue.to_string(),
    };
    let (uuid, id) = laravel::new_job_ids();
    laravel::build_job(target, &opts, data, &uuid, &id)
}
