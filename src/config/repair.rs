//! Past serde's first mistake inside a rule. serde stops at the first key it does not know or
//! the first value of the wrong type; `check` must still report every mistake of the rule.
//! So a rule that does not parse is repaired, one mistake at a time, and parsed again: a
//! misspelt key with one close match is renamed to it (so its value is still checked), any
//! other entry at fault is blanked out. Every edit keeps the rule's line count, and blanking
//! keeps columns too; a rename records how it shifts the rest of its line, so that what is
//! reported later on that line still points at what the user wrote.
//!
//! Work is bounded: at most [`MAX_STEPS_PER_RULE`] repairs of a rule, each one parse of the
//! rule's own lines, and no more than [`REPARSE_BYTES_PER_FILE_BYTE`] times the file's size
//! parsed again in all, so a file of many broken rules costs time in proportion to its size.

/// Repairs tried on one rule before its remaining mistakes go unreported.
pub(super) const MAX_STEPS_PER_RULE: usize = 32;
/// Bytes parsed again while repairing, per byte of the file.
pub(super) const REPARSE_BYTES_PER_FILE_BYTE: usize = 4;

/// A rename on a line: columns after `column` (1-based, in the edited text) moved by `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shift {
    /// 1-based line within the rule's lines.
    pub line: usize,
    pub column: usize,
    pub delta: isize,
}

/// Where a position in the edited lines was in the text the user wrote.
pub(super) fn original_column(shifts: &[Shift], line: usize, column: usize) -> usize {
    let moved: isize = shifts
        .iter()
        .filter(|s| s.line == line && s.column < column)
        .map(|s| s.delta)
        .sum();
    (column as isize - moved).max(1) as usize
}

/// Rename the key starting at `column` (1-based, chars) of `line` (0-based) from `from` to `to`.
pub(super) fn rename(lines: &mut [String], line: usize, column: usize, from: &str, to: &str) -> Option<Shift> {
    let text = lines.get(line)?;
    let start = byte_at(text, column - 1)?;
    if !text[start..].starts_with(from) {
        return None;
    }
    let mut edited = String::with_capacity(text.len() + to.len());
    edited.push_str(&text[..start]);
    edited.push_str(to);
    edited.push_str(&text[start + from.len()..]);
    lines[line] = edited;
    Some(Shift {
        line: line + 1,
        column,
        delta: to.chars().count() as isize - from.chars().count() as isize,
    })
}

/// Blank out (with spaces) the mapping entry holding `column` (1-based, chars) of `line`
/// (0-based): in a flow mapping on one line, the entry up to its comma; in a block mapping, the
/// key's line from the key on, and the lines under it. `None` when the entry cannot be told
/// (a flow collection spanning lines).
pub(super) fn blank_entry(lines: &mut [String], line: usize, column: usize) -> Option<()> {
    let chars: Vec<char> = lines.get(line)?.chars().collect();
    let at = (column.max(1) - 1).min(chars.len());
    // Open flow brackets before the position.
    let mut open: Vec<usize> = Vec::new();
    for (i, c) in unquoted(&chars, 0, at) {
        match c {
            '{' | '[' => open.push(i),
            '}' | ']' => {
                open.pop();
            }
            '#' if i == 0 || chars[i - 1] == ' ' => break,
            _ => {}
        }
    }
    let (start, end, below) = match open.last() {
        Some(&bracket) => {
            let start = entry_start(&chars, bracket, at);
            (start, entry_end(&chars, at)?, false)
        }
        None => {
            let indent = chars.iter().take_while(|c| **c == ' ').count();
            let mut key = indent;
            // `- key: value`, `- - key: value`: the entry starts after the dashes.
            while chars.get(key) == Some(&'-') && chars.get(key + 1) == Some(&' ') {
                key += 2;
                while chars.get(key) == Some(&' ') {
                    key += 1;
                }
            }
            (key, chars.len(), true)
        }
    };
    let mut edited = chars.clone();
    for c in &mut edited[start..end] {
        *c = ' ';
    }
    lines[line] = edited.into_iter().collect::<String>().trim_end().to_string();
    if below {
        let key_column = start;
        for next in lines.iter_mut().skip(line + 1) {
            let trimmed = next.trim_start();
            let indent = next.len() - trimmed.len();
            if !trimmed.is_empty() && indent <= key_column {
                break;
            }
            next.clear();
        }
    }
    Some(())
}

/// The first char of the flow entry holding `at`: after the last `,` of its own depth.
fn entry_start(chars: &[char], bracket: usize, at: usize) -> usize {
    let mut depth = 0usize;
    let mut start = bracket + 1;
    for (i, c) in unquoted(chars, bracket + 1, at) {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => start = i + 1,
            _ => {}
        }
    }
    start
}

/// Past the end of the flow entry holding `at`: after its comma, or at the closing bracket.
fn entry_end(chars: &[char], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in unquoted(chars, at, chars.len()) {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' if depth == 0 => return Some(i),
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The chars of `chars[from..to]` outside quoted text (`'…'`, `"…"`), with their index;
/// `from` must be outside quotes.
fn unquoted(chars: &[char], from: usize, to: usize) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote: Option<char> = None;
    chars
        .iter()
        .copied()
        .enumerate()
        .take(to)
        .skip(from)
        .filter(move |&(_, c)| match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                false
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                false
            }
            None => true,
        })
}

/// The byte offset of char `index` in `text`.
fn byte_at(text: &str, index: usize) -> Option<usize> {
    text.char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn blanks_a_flow_entry_keeping_columns() {
        let text = "    source: { channel: x, buffr: \"a,b\", batch: 3 }";
        let mut l = lines(text);
        blank_entry(&mut l, 0, 27).unwrap();
        assert_eq!(l[0], text.replace(" buffr: \"a,b\",", &" ".repeat(14)));
        let mut l = lines("    source: { buffr: { a: [1, 2] } }");
        blank_entry(&mut l, 0, 15).unwrap();
        assert_eq!(l[0], "    source: {                      }");
    }

    #[test]
    fn blanks_a_block_entry_and_what_is_under_it() {
        let mut l = lines("  - name: a\n    filtr:\n      deep: 1\n\n    sinks: []");
        blank_entry(&mut l, 1, 5).unwrap();
        assert_eq!(l, ["  - name: a", "", "", "", "    sinks: []"]);
        let mut l = lines("      - stream: y\n        max_len: 3");
        blank_entry(&mut l, 0, 16).unwrap();
        assert_eq!(l, ["      -", "        max_len: 3"]);
    }

    #[test]
    fn a_flow_collection_over_lines_is_not_guessed() {
        let mut l = lines("    source: { buffr: 3");
        assert_eq!(blank_entry(&mut l, 0, 15), None);
    }

    #[test]
    fn a_rename_shifts_the_rest_of_its_line() {
        let mut l = lines("    source: { chanel: x, buffr: 3 }");
        let shift = rename(&mut l, 0, 15, "chanel", "channel").unwrap();
        assert_eq!(l[0], "    source: { channel: x, buffr: 3 }");
        // `buffr` is at column 27 in the edited line, 26 in the file.
        assert_eq!(original_column(&[shift], 1, 27), 26);
        assert_eq!(original_column(&[shift], 1, 5), 5);
        assert_eq!(original_column(&[shift], 2, 27), 27);
    }
}
