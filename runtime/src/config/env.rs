//! `${NAME}` expansion, so secrets such as Redis passwords stay out of the file.

/// Replaces every `${NAME}` in `value` with the environment variable `NAME`,
/// and every `${NAME:-default}` with `NAME`, or `default` when `NAME` is
/// unset or empty (as a shell does). `$$` stands for a literal `$`. Errors
/// name the unset variable.
pub fn expand(value: &str) -> Result<String, String> {
    expand_with(value, |name| std::env::var(name).ok())
}

/// [`expand`] with a custom variable lookup (for tests).
pub fn expand_with(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in {value:?}"))?;
            let found = match after[..end].split_once(":-") {
                Some((name, default)) => lookup(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned()),
                None => {
                    let name = &after[..end];
                    lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?
                }
            };
            out.push_str(&found);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "PW").then(|| "s3cret".to_owned())
    }

    #[test]
    fn expands_known_variables() {
        let got = expand_with("redis://:${PW}@host:1/$$x", lookup).unwrap();
        assert_eq!(got, "redis://:s3cret@host:1/$x");
    }

    #[test]
    fn unset_variable_is_named() {
        let err = expand_with("${NOPE}", lookup).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
    }

    #[test]
    fn a_default_stands_in_for_an_unset_or_empty_variable() {
        let lookup = |name: &str| match name {
            "PW" => Some("s3cret".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand_with("${PW:-demo}", lookup).unwrap(), "s3cret");
        assert_eq!(expand_with("${NOPE:-demo}|${EMPTY:-x}|${NOPE:-}", lookup).unwrap(), "demo|x|");
        assert!(expand_with("${NOPE}", lookup).is_err(), "no default: still an error");
    }

    #[test]
    fn lone_dollar_is_kept() {
        assert_eq!(expand_with("a$b", lookup).unwrap(), "a$b");
    }
}
