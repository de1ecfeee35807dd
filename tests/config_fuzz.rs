//! Property test of the rule-file loader: thousands of mutated rule files (bytes deleted,
//! inserted, lines swapped or duplicated, values replaced) never panic, and every mistake is
//! reported with a line and column.

use std::panic::{AssertUnwindSafe, catch_unwind};

const ROUNDS: usize = 4000;
const PIECES: &[&str] = &[
    ":", " ", "-", "\n", "{", "}", "[", "]", "'", "\"", "{{", "}}", "$", "@", "#", "*", "&a", "*a", "!!str", "${X}",
    "stream", "channel", "sinks", "source", "filter", "maxlen", "ü", "\t", "\\", "|", ">", "0", "-1",
];

fn mutate(text: &str, rng: &mut fastrand::Rng) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..rng.usize(1..6) {
        let pos = rng.usize(0..=s.len());
        match rng.u8(0..5) {
            0 if !s.is_empty() => {
                let end = (pos + rng.usize(1..8)).min(s.len());
                s.drain(pos.min(s.len())..end);
            }
            1 => {
                let piece = PIECES[rng.usize(0..PIECES.len())];
                s.splice(pos..pos, piece.chars());
            }
            2 => {
                let lines: Vec<String> = s.iter().collect::<String>().lines().map(String::from).collect();
                if lines.len() > 2 {
                    let mut lines = lines;
                    let a = rng.usize(0..lines.len());
                    let b = rng.usize(0..lines.len());
                    lines.swap(a, b);
                    s = lines.join("\n").chars().collect();
                }
            }
            3 => {
                let lines: Vec<String> = s.iter().collect::<String>().lines().map(String::from).collect();
                if !lines.is_empty() {
                    let mut lines = lines;
                    let a = rng.usize(0..lines.len());
                    let dup = lines[a].clone();
                    lines.insert(a, dup);
                    s = lines.join("\n").chars().collect();
                }
            }
            _ => {
                if pos < s.len() {
                    s[pos] = PIECES[rng.usize(0..PIECES.len())].chars().next().unwrap_or('x');
                }
            }
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_rule_files_never_panic_and_errors_have_positions() {
    let seeds = [
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.example.yaml")).unwrap(),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rules/invalid/five-mistakes.yaml"
        ))
        .unwrap(),
    ];
    let env = |name: &str| (name == "X").then(|| "x".to_string());
    let mut rng = fastrand::Rng::with_seed(2026);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..ROUNDS {
        let text = mutate(&seeds[round % seeds.len()], &mut rng);
        let result = catch_unwind(AssertUnwindSafe(|| {
            redis_router::config::load_str_with_env(&text, "m.yaml", &env)
        }));
        let Ok(result) = result else {
            panic!("the loader panicked on:\n{text}");
        };
        match result {
            Ok(_) => valid += 1,
            Err(e) => {
                invalid += 1;
                assert!(!e.diagnostics().is_empty(), "an error without diagnostics: {e}\n{text}");
                for d in e.diagnostics() {
                    assert!(
                        d.line >= 1 && d.column >= 1,
                        "no position: {}\n--- file ---\n{text}",
                        d.render("m.yaml")
                    );
                    assert!(!d.message.is_empty());
                }
            }
        }
    }
    eprintln!("{ROUNDS} mutated files: {valid} still valid, {invalid} rejected, each mistake with line and column");
    assert!(invalid > ROUNDS / 4, "the mutations do break files");
}
