//! The engine: rule tasks under a supervisor, the rule loop, dead letters and rule-set diffs.

pub mod deadletter;
pub mod diff;
pub mod rule;
pub mod supervisor;

pub use diff::{RuleSetDiff, diff};
pub use rule::{RuleExit, run_rule};
pub use supervisor::Supervisor;
