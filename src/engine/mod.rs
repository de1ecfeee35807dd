//! The engine: rule tasks under a supervisor, the rule loop, rule-set diffs, and
//! hot reload (the file watcher and the reload step).

pub mod diff;
pub mod reload;
pub mod route;
pub mod rule;
pub mod supervisor;
pub mod watcher;

pub use diff::{RuleSetDiff, diff};
pub use reload::{ReloadOutcome, ReloadStats, Reloader};
pub use rule::{RuleExit, run_rule};
pub use supervisor::{Handover, Supervisor};
pub use watcher::{ConfigWatcher, ReloadTrigger};
