//! `[streams."NAME"]`, resolved: which retention applies to a stream. A
//! table names a stream or a glob (`"*"`, `"orders.*"`); for a stream, a
//! table naming it exactly wins, else the longest glob that matches it.
//! Dead-letter streams and inboxes match like any stream.

use crate::stream::retention::Retention;
use globset::GlobMatcher;

/// Every `[streams]` table, compiled.
#[derive(Debug, Clone, Default)]
pub struct StreamRules {
    /// (pattern as written, its matcher, its retention), longest pattern first.
    rules: Vec<(String, GlobMatcher, Retention)>,
}

impl StreamRules {
    /// The rules, from (pattern, matcher, retention) triples.
    pub fn new(mut rules: Vec<(String, GlobMatcher, Retention)>) -> StreamRules {
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        StreamRules { rules }
    }

    /// The retention of `stream`, if a table bounds it.
    pub fn retention(&self, stream: &str) -> Option<Retention> {
        let exact = self.rules.iter().find(|(p, _, _)| p == stream);
        let rule = exact.or_else(|| self.rules.iter().find(|(_, m, _)| m.is_match(stream)));
        rule.map(|(_, _, r)| *r).filter(Retention::is_bounded)
    }

    /// The pattern that applies to `stream`, for display.
    pub fn pattern_for(&self, stream: &str) -> Option<&str> {
        let exact = self.rules.iter().find(|(p, _, _)| p == stream);
        exact.or_else(|| self.rules.iter().find(|(_, m, _)| m.is_match(stream))).map(|(p, _, _)| p.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, max_len: u64) -> (String, GlobMatcher, Retention) {
        let retention = Retention { max_len: Some(max_len), max_age: None };
        (pattern.to_owned(), globset::Glob::new(pattern).unwrap().compile_matcher(), retention)
    }

    #[test]
    fn an_exact_name_wins_then_the_longest_glob() {
        let rules = StreamRules::new(vec![rule("*", 1), rule("orders.*", 2), rule("orders.eu", 3)]);
        assert_eq!(rules.retention("orders.eu").unwrap().max_len, Some(3));
        assert_eq!(rules.retention("orders.us").unwrap().max_len, Some(2));
        assert_eq!(rules.retention("orders.us:dlq").unwrap().max_len, Some(2));
        assert_eq!(rules.retention("sluice:inbox:h").unwrap().max_len, Some(1));
        assert_eq!(StreamRules::default().retention("x"), None);
        let unbounded = (String::from("x"), globset::Glob::new("x").unwrap().compile_matcher(), Retention::default());
        assert_eq!(StreamRules::new(vec![unbounded]).retention("x"), None, "a table without a bound keeps everything");
    }
}
