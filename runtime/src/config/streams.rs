//! `[streams."NAME"]`, resolved: which retention and which format apply to a
//! stream. A table names a stream or a glob (`"*"`, `"orders.*"`); for a
//! stream, a table naming it exactly wins, else the longest glob that matches
//! it. The retention comes from that table; the format from the most
//! specific table that sets one. Inboxes match like any stream. Dead-letter
//! streams too, except that only a table naming one, or a glob ending in
//! `:dlq`, bounds it: a dead letter is an event no handler finished, and
//! nothing reads it to hold back a trim, so a glob written for a handler's
//! streams (`"*"`, `"orders*"`) must not quietly remove them.

use crate::format::Format;
use crate::stream::retention::Retention;
use globset::GlobMatcher;

/// One `[streams."NAME"]` table, compiled.
#[derive(Debug, Clone)]
pub struct StreamRule {
    /// The name or glob as written.
    pub pattern: String,
    /// `pattern`, compiled.
    pub matcher: GlobMatcher,
    /// How much to keep.
    pub retention: Retention,
    /// How entries are laid out, if the table says.
    pub format: Option<Format>,
}

/// Every `[streams]` table, compiled.
#[derive(Debug, Clone, Default)]
pub struct StreamRules {
    /// Longest pattern first.
    rules: Vec<StreamRule>,
    /// Whether any table sets a format (else every stream is Sluice's,
    /// found without matching a glob).
    formats: bool,
}

/// How a glob that bounds dead-letter streams ends.
pub const DEAD_LETTER_GLOB_SUFFIX: &str = ":dlq";

/// The format of a stream no table gives one.
static SLUICE: Format = Format::Sluice;

impl StreamRules {
    /// The rules, from the compiled tables.
    pub fn new(mut rules: Vec<StreamRule>) -> StreamRules {
        rules.sort_by(|a, b| b.pattern.len().cmp(&a.pattern.len()).then_with(|| a.pattern.cmp(&b.pattern)));
        let formats = rules.iter().any(|r| r.format.is_some());
        StreamRules { rules, formats }
    }

    /// The tables that apply to `stream`, most specific first: one naming it
    /// exactly, then the globs matching it, longest first.
    fn matching<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a StreamRule> + 'a {
        let exact = self.rules.iter().filter(move |r| r.pattern == stream);
        exact.chain(self.rules.iter().filter(move |r| r.pattern != stream && r.matcher.is_match(stream)))
    }

    /// The retention of `stream`, if a table bounds it.
    pub fn retention(&self, stream: &str) -> Option<Retention> {
        self.matching(stream).next().map(|r| r.retention).filter(Retention::is_bounded)
    }

    /// The retention of dead-letter stream `stream`, if a table naming it,
    /// or a glob written for dead letters (ending in `:dlq`), bounds it.
    pub fn dead_letter_retention(&self, stream: &str) -> Option<Retention> {
        let mut tables =
            self.matching(stream).filter(|r| r.pattern == stream || r.pattern.ends_with(DEAD_LETTER_GLOB_SUFFIX));
        tables.next().map(|r| r.retention).filter(Retention::is_bounded)
    }

    /// The glob that would bound dead-letter stream `stream` were it any
    /// other stream, when no table bounds it as a dead-letter stream.
    pub fn glob_sparing_dead_letters<'a>(&'a self, stream: &'a str) -> Option<&'a str> {
        let spared = self.retention(stream).is_some() && self.dead_letter_retention(stream).is_none();
        spared.then(|| self.pattern_for(stream)).flatten()
    }

    /// The pattern that applies to `stream`, for display.
    pub fn pattern_for<'a>(&'a self, stream: &'a str) -> Option<&'a str> {
        self.matching(stream).next().map(|r| r.pattern.as_str())
    }

    /// The format of `stream`'s entries: `sluice` unless a table says.
    pub fn format<'a>(&'a self, stream: &'a str) -> &'a Format {
        if !self.formats {
            return &SLUICE;
        }
        self.matching(stream).find_map(|r| r.format.as_ref()).unwrap_or(&SLUICE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pattern: &str, retention: Retention, format: Option<Format>) -> StreamRule {
        let matcher = globset::Glob::new(pattern).unwrap().compile_matcher();
        StreamRule { pattern: pattern.to_owned(), matcher, retention, format }
    }

    fn rule(pattern: &str, max_len: u64) -> StreamRule {
        table(pattern, Retention { max_len: Some(max_len), max_age: None }, None)
    }

    #[test]
    fn an_exact_name_wins_then_the_longest_glob() {
        let rules = StreamRules::new(vec![rule("*", 1), rule("orders.*", 2), rule("orders.eu", 3)]);
        assert_eq!(rules.retention("orders.eu").unwrap().max_len, Some(3));
        assert_eq!(rules.retention("orders.us").unwrap().max_len, Some(2));
        assert_eq!(rules.retention("orders.us:dlq").unwrap().max_len, Some(2));
        assert_eq!(rules.dead_letter_retention("orders.us:dlq"), None, "a glob for streams spares dead letters");
        assert_eq!(rules.glob_sparing_dead_letters("orders.us:dlq"), Some("orders.*"));
        assert_eq!(rules.retention("sluice:inbox:h").unwrap().max_len, Some(1));
        assert_eq!(StreamRules::default().retention("x"), None);
        let unbounded = table("x", Retention::default(), None);
        assert_eq!(StreamRules::new(vec![unbounded]).retention("x"), None, "a table without a bound keeps everything");
    }

    #[test]
    fn dead_letters_are_bounded_by_their_name_or_a_glob_for_dead_letters() {
        let rules = StreamRules::new(vec![rule("*", 1), rule("*:dlq", 2), rule("orders:dlq", 3), rule("failed", 4)]);
        assert_eq!(rules.dead_letter_retention("orders:dlq").unwrap().max_len, Some(3));
        assert_eq!(rules.dead_letter_retention("users:dlq").unwrap().max_len, Some(2));
        assert_eq!(rules.dead_letter_retention("failed").unwrap().max_len, Some(4));
        assert_eq!(rules.glob_sparing_dead_letters("users:dlq"), None);
        let streams_only = StreamRules::new(vec![rule("*", 1)]);
        assert_eq!(streams_only.dead_letter_retention("failed"), None);
        assert_eq!(streams_only.glob_sparing_dead_letters("failed"), Some("*"));
        let unbounded = StreamRules::new(vec![rule("*", 1), table("orders:dlq", Retention::default(), None)]);
        assert_eq!(unbounded.dead_letter_retention("orders:dlq"), None, "a table naming it without a bound keeps all");
        assert_eq!(unbounded.glob_sparing_dead_letters("orders:dlq"), None);
    }

    #[test]
    fn the_format_comes_from_the_most_specific_table_that_sets_one() {
        let rules = StreamRules::new(vec![
            table("mq:*", Retention::default(), Some(Format::leanmq())),
            rule("mq:orders", 5),
            table("dapr.*", Retention::default(), Some(Format::CloudEvents)),
            table("dapr.raw", Retention::default(), Some(Format::Sluice)),
        ]);
        assert_eq!(rules.format("mq:orders"), &Format::leanmq(), "a table without a format does not reset it");
        assert_eq!(rules.retention("mq:orders").unwrap().max_len, Some(5));
        assert_eq!(rules.format("mq:orders:dlq"), &Format::leanmq());
        assert_eq!(rules.format("dapr.orders"), &Format::CloudEvents);
        assert_eq!(rules.format("dapr.raw"), &Format::Sluice);
        assert_eq!(rules.format("orders"), &Format::Sluice);
        assert_eq!(StreamRules::default().format("orders"), &Format::Sluice);
    }
}
