//! Pure comparison of two rule sets by rule name: what a reload must start, stop or restart.

use std::collections::{HashMap, HashSet};

use crate::config::RuleSpec;

/// What changed between two rule sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleSetDiff {
    /// In the new set only: start.
    pub added: Vec<String>,
    /// In the old set only: drain and stop.
    pub removed: Vec<String>,
    /// In both, different (the rule or a connection it uses): drain, then restart.
    pub changed: Vec<String>,
    /// In both, equal: leave running untouched.
    pub unchanged: Vec<String>,
}

impl RuleSetDiff {
    /// Whether anything must be started or stopped.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compare by name. Rule specs embed their connections, so a changed connection URL or prefix
/// makes exactly the rules that use it "changed"; a rule whose only change is its `tests:` is
/// unchanged ([`RuleSpec::runs_like`]).
pub fn diff<'a>(old: impl IntoIterator<Item = &'a RuleSpec>, new: &[RuleSpec]) -> RuleSetDiff {
    // By name through maps: ten thousand rules must not cost a hundred million comparisons.
    let old: Vec<&RuleSpec> = old.into_iter().collect();
    let old_by_name: HashMap<&str, &RuleSpec> = old.iter().map(|o| (o.name.as_str(), *o)).collect();
    let new_names: HashSet<&str> = new.iter().map(|r| r.name.as_str()).collect();
    let mut out = RuleSetDiff::default();
    for rule in new {
        match old_by_name.get(rule.name.as_str()) {
            None => out.added.push(rule.name.clone()),
            Some(o) if o.runs_like(rule) => out.unchanged.push(rule.name.clone()),
            Some(_) => out.changed.push(rule.name.clone()),
        }
    }
    for o in &old {
        if !new_names.contains(o.name.as_str()) {
            out.removed.push(o.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn rules(yaml: &str) -> Vec<RuleSpec> {
        load_str(yaml, "t.yaml").unwrap().rules
    }

    const BASE: &str = "connections:\n  default: { url: 'redis://h:1' }\n  other: { url: 'redis://h:2' }\nrules:\n";

    fn rule(name: &str, channel: &str, conn: &str) -> String {
        format!(
            "  - name: {name}\n    source: {{ channel: {channel}, connection: {conn} }}\n    sinks: [ {{ stream: out }} ]\n"
        )
    }

    #[test]
    fn table() {
        let cases: Vec<(String, String, RuleSetDiff)> = vec![
            (
                format!("{BASE}{}{}", rule("a", "x", "default"), rule("b", "y", "default")),
                format!("{BASE}{}{}", rule("a", "x", "default"), rule("c", "z", "default")),
                RuleSetDiff {
                    added: vec!["c".into()],
                    removed: vec!["b".into()],
                    changed: vec![],
                    unchanged: vec!["a".into()],
                },
            ),
            (
                format!("{BASE}{}", rule("a", "x", "default")),
                format!("{BASE}{}", rule("a", "x2", "default")),
                RuleSetDiff {
                    changed: vec!["a".into()],
                    ..Default::default()
                },
            ),
            (
                format!("{BASE}{}", rule("a", "x", "default")),
                format!(
                    "{BASE}{}    tests:\n      - {{ input: '{{}}', expect: {{ filtered_out: false }} }}\n",
                    rule("a", "x", "default")
                ),
                RuleSetDiff {
                    unchanged: vec!["a".into()],
                    ..Default::default()
                },
            ),
            (
                format!("{BASE}{}{}", rule("a", "x", "default"), rule("b", "x", "other")),
                format!(
                    "{}{}{}",
                    BASE.replace("redis://h:2", "redis://h:3"),
                    rule("a", "x", "default"),
                    rule("b", "x", "other")
                ),
                RuleSetDiff {
                    changed: vec!["b".into()],
                    unchanged: vec!["a".into()],
                    ..Default::default()
                },
            ),
        ];
        for (old, new, want) in cases {
            let old = rules(&old);
            assert_eq!(diff(&old, &rules(&new)), want);
        }
    }
}
