//! The per-message decisions of a rule that need no Redis: source problem, rule filter,
//! transform, and which sinks take the message. The rule loop and `redis-router test` both call
//! these, so the offline tests exercise exactly what the engine does.

use crate::config::{RuleSpec, SinkSpec};
use crate::message::Message;

/// What a rule does with one message before its sinks.
#[derive(Debug)]
pub enum Admission {
    /// The message goes to the dead-letter stream with this reason.
    DeadLetter(String),
    /// The rule's filter rejects it.
    FilteredOut,
    /// It goes on to the sinks: as it is, or as the transform's result.
    Pass(Option<Box<Message>>),
}

/// Decide what happens to `msg` before the sinks.
pub fn admit(rule: &RuleSpec, msg: &Message) -> Admission {
    if let Some(problem) = &msg.meta.problem {
        return Admission::DeadLetter(problem.clone());
    }
    if let Some(filter) = &rule.filter {
        match filter.matches(msg) {
            Ok(true) => {}
            Ok(false) => return Admission::FilteredOut,
            Err(e) => return Admission::DeadLetter(format!("filter: {e}")),
        }
    }
    match &rule.transform {
        None => Admission::Pass(None),
        Some(transform) => match transform.apply(msg) {
            Ok(value) => Admission::Pass(Some(Box::new(Message::from_json(value, msg.meta.clone())))),
            Err(e) => Admission::DeadLetter(format!("transform: {e}")),
        },
    }
}

/// Whether `sink` takes `msg` (its own `filter`).
///
/// # Errors
/// The dead-letter reason when the sink's filter cannot be evaluated on the message.
pub fn sink_takes(sink: &SinkSpec, msg: &Message) -> Result<bool, String> {
    match &sink.filter {
        None => Ok(true),
        Some(f) => f.matches(msg).map_err(|e| format!("sink filter: {e}")),
    }
}

/// The dead-letter reason for a message a sink failed, after `attempts` tries.
pub fn sink_failure_reason(retryable: bool, attempts: u32) -> String {
    if retryable {
        format!("sink failed {attempts} times")
    } else {
        "sink refused the message (not retryable)".to_string()
    }
}
