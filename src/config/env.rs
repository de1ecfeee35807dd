//! `${VAR}` and `${VAR:-default}` expansion of rule-file strings.
//!
//! Expansion happens on parsed values, not on the file text, so a value containing YAML
//! punctuation (a password with `#` or `: `) cannot change the structure of the file.

/// Expand `${VAR}` and `${VAR:-default}` in `text`; `$${` stands for a literal `${`.
///
/// # Errors
/// A message naming an unset variable that has no default, or an unclosed `${`.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or_else(|| {
            format!("`${{` without closing `}}` in `{text}`; write `${{VAR}}` or `${{VAR:-default}}`")
        })?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{inner}}}` is not a variable name; write `${{VAR}}` or `${{VAR:-default}}`"
            ));
        }
        // Like the shell's `:-`, an empty value takes the default too.
        let value = match (env(name), default) {
            (Some(value), default) if !(value.is_empty() && default.is_some()) => value,
            (_, Some(default)) => default.to_string(),
            (_, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set; set it, or write `${{{name}:-default}}`"
                ));
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        let cases = [
            ("redis://${HOST}:6379", Ok("redis://db:6379".to_string())),
            ("${NOPE:-redis://x}", Ok("redis://x".into())),
            ("${EMPTY:-fallback}", Ok("fallback".into())),
            ("${EMPTY}", Ok(String::new())),
            ("plain", Ok("plain".into())),
            ("$${HOST}", Ok("${HOST}".into())),
            ("a${HOST}b${HOST}", Ok("adbbdb".into())),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env), want, "{input}");
        }
        assert!(expand("${NOPE}", &env).unwrap_err().contains("`NOPE` is not set"));
        assert!(expand("${HOST", &env).unwrap_err().contains("without closing"));
    }
}
