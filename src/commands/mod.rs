//! The commands besides `run`: each reads a rule file and uses the engine's parts, and nothing
//! of the engine uses them.
//!
//! - [`test`]: `redis-router test`: each rule's `tests:` cases, run offline through the
//!   engine's filter, transform and sink rendering.
//! - [`acl`]: the Redis ACL rule a rule file needs, and the clients it opens (`check`).
//! - [`dlq`]: `redis-router dlq list|replay`: reading and replaying dead letters.
//! - [`demo`]: `redis-router demo`: the example rules against a throwaway redis-server.
//! - [`tap`]: `redis-router tap`: a running router's messages, live.

pub mod acl;
pub mod demo;
pub mod dlq;
pub mod tap;
pub mod test;
