//! The least a Redis ACL user needs to run Sluice: the commands in
//! [`COMMANDS`] (those Sluice sends, and those its scripts call), on the
//! keys a config names ([`key_patterns`]). `sluice acl` prints the rule to
//! paste; docs/operating.md shows it for the shipped config, and a test
//! checks the two agree and runs everything as a user made from the rule.

use crate::config::Config;
use std::collections::BTreeSet;

/// Every command Sluice runs, with the reason. Subcommands are written
/// `command|subcommand`, as `ACL SETUSER` takes them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("ping", "checking the connection"),
    ("client|id", "naming a reader's connection, to interrupt its blocking read on shutdown"),
    ("client|unblock", "interrupting a blocking read on shutdown"),
    ("xgroup|create", "creating each handler's consumer group"),
    ("xgroup|delconsumer", "forgetting consumers left behind by stopped hosts (forget_consumers_after_ms)"),
    ("xreadgroup", "reading new entries (also with the commit script, for the permits a commit frees)"),
    (
        "xread",
        "waiting for new entries, for a handler with `order_by` (it reads by script); `sluice request` waiting for its reply",
    ),
    ("xrevrange", "finding a stream's last entry, to wait for the next (`order_by`)"),
    (
        "xpending",
        "taking back this host's own entries after a restart, finding entries abandoned by dead hosts (by script), and checking, in the commit, that an entry is still pending (and, after a commit that found it not, why)",
    ),
    ("xclaim", "taking entries back for a retry, and taking over entries abandoned by dead hosts (by script)"),
    ("xack", "acknowledging entries (in the commit)"),
    ("xadd", "publishing, dead-lettering, `sluice publish`, redrive and replay; waking consumers (`order_by`)"),
    ("xdel", "deleting inbox entries once handled, redriven dead letters, and `dlq purge`"),
    ("xrange", "`sluice dlq`, replay, redrive, trimming, and counting entries removed before a group read them"),
    ("xlen", "`sluice status` and the metrics"),
    (
        "xinfo|groups",
        "`sluice status`, the metrics, readiness, trimming (each group's progress), counting entries removed before a group read them, and why a commit found its entry no longer pending",
    ),
    ("xinfo|stream", "counting entries another program removed before a group read them"),
    ("exists", "counting entries another program removed before a group read them (does the stream exist)"),
    ("xinfo|consumers", "finding consumers left behind by stopped hosts"),
    ("xtrim", "keeping streams within their `[streams]` bounds"),
    ("time", "measuring entries' age against `max_age_ms` by Redis's clock (in the trim)"),
    ("type", "refusing a commit whose target is not a stream (in the commit)"),
    ("get", "kv.get, and leases (trimming's, and each key's with `order_by`)"),
    ("set", "kv.set (in the commit), and leases"),
    (
        "del",
        "kv.delete (in the commit), giving up a key's lease (`order_by`), and `sluice request` deleting its reply stream",
    ),
    ("pexpire", "renewing a key's lease (`order_by`), and a reply stream's time to live (in the commit)"),
    ("rpush", "a key's queue of entries (`order_by`)"),
    ("lpop", "a key's queue of entries (`order_by`)"),
    ("rpop", "a key's queue of entries, after its group was set back (`order_by`)"),
    ("lindex", "a key's queue of entries (`order_by`)"),
    ("lrem", "a key's queue of entries (`order_by`)"),
    ("lpos", "a key's queue of entries (`order_by`)"),
    ("lrange", "a key's queue of entries (`order_by`)"),
    ("linsert", "a key's queue of entries (`order_by`)"),
    ("sadd", "keys waiting for a consumer with room (`order_by`)"),
    ("spop", "keys waiting for a consumer with room (`order_by`)"),
    ("hget", "the relay's marks (Redis Cluster), and the record of entries removed before a group read them"),
    ("hset", "the relay's marks (Redis Cluster), and the record of entries removed before a group read them"),
    ("evalsha", "running the commit, redrive, relay, lease, key-order, trim and upkeep scripts"),
    (
        "eval",
        "running one of those scripts by its body where Redis does not have it yet (after a restart, or on a node promoted in a failover)",
    ),
    ("cluster|slots", "learning a Redis Cluster's layout"),
    (
        "cluster|nodes",
        "learning which masters of a Redis Cluster have replicas (the relay, and a redrive across slots)",
    ),
    (
        "wait",
        "making sure a replica has what the relay, or a redrive across slots, wrote on another master before the outbox entry or dead letter goes (Redis Cluster)",
    ),
    ("role", "checking that the server Redis Sentinel names is the primary (`[redis] sentinels`)"),
];

/// The key patterns `config` needs: every stream its handlers read,
/// publish to or dead-letter into, and Sluice's own keys (`sluice:*`:
/// inboxes, kv, outboxes, leases). Glob characters in a name are escaped.
pub fn key_patterns(config: &Config) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for h in &config.handlers {
        for s in &h.streams {
            keys.insert(escape(s));
            keys.insert(escape(&h.dead_letter_stream(s)));
        }
        keys.extend(h.publish.iter().map(|p| escape(p)));
    }
    let own = "sluice:*".to_owned();
    keys.retain(|k| !k.starts_with("sluice:"));
    std::iter::once(own).chain(keys).collect()
}

/// The `ACL SETUSER` line for user `user` of `config`, with `PASSWORD` to
/// replace: on, no keys or channels but its own, no commands but
/// [`COMMANDS`].
pub fn rule(config: &Config, user: &str) -> String {
    let keys: Vec<String> = key_patterns(config).iter().map(|k| format!("~{k}")).collect();
    let commands: Vec<String> = COMMANDS.iter().map(|(c, _)| format!("+{c}")).collect();
    format!("ACL SETUSER {user} on >PASSWORD resetkeys resetchannels {} -@all {}", keys.join(" "), commands.join(" "))
}

/// `name` as an ACL key pattern that matches it alone.
fn escape(name: &str) -> String {
    name.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a script calls is in the rule: a missing one fails
    /// only when the script reaches it (NOPERM), which may be a rare path.
    #[test]
    fn every_command_the_scripts_call_is_in_the_rule() {
        // Every script in this folder, so that a new one cannot be missed.
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src/stream");
        let scripts: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "lua"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(scripts.len() > 10, "the scripts in {}", folder.display());
        // A command the rule allows by subcommand (`xinfo|groups`) is
        // checked with the subcommand the script names.
        let by_subcommand = |command: &str| COMMANDS.iter().any(|(c, _)| c.starts_with(&format!("{command}|")));
        let mut called = BTreeSet::new();
        for script in &scripts {
            for part in script.split("call('").skip(1) {
                let words: Vec<&str> = part.splitn(4, '\'').collect();
                let command = words[0].to_lowercase();
                match words.get(1) == Some(&", ") && by_subcommand(&command) {
                    true => called.insert(format!("{command}|{}", words[2].to_lowercase())),
                    false => called.insert(command),
                };
            }
        }
        assert!(called.len() > 20 && called.contains("xpending") && called.contains("xinfo|groups"), "{called:?}");
        for command in &called {
            let allowed = COMMANDS.iter().any(|(c, _)| c == command);
            assert!(allowed, "a script calls {command}, which the ACL rule does not allow");
        }
    }

    #[test]
    fn glob_characters_in_names_are_escaped() {
        assert_eq!(escape("orders.*"), "orders.\\*");
        assert_eq!(escape("{shop}:orders"), "{shop}:orders");
    }

    #[test]
    fn the_rule_names_every_stream_and_only_sluices_own_keys_beyond() {
        let toml = "[handlers.p]\nplugin = \"/p.wasm\"\nstreams = [\"orders\"]\npublish = [\"payments\"]\n[handlers.a]\nplugin = \"/a.wasm\"\nstreams = [\"orders\", \"payments\"]\ndead_letter = \"all:dlq\"\n";
        let config = Config::parse_unchecked(std::path::Path::new("c.toml"), toml).unwrap();
        assert_eq!(key_patterns(&config), ["sluice:*", "all:dlq", "orders", "orders:dlq", "payments"]);
        let rule = rule(&config, "sluice");
        assert!(
            rule.starts_with("ACL SETUSER sluice on >PASSWORD resetkeys resetchannels ~sluice:* ~all:dlq"),
            "{rule}"
        );
        assert!(rule.contains(" -@all +ping +client|id "), "{rule}");
        assert!(!rule.contains("setinfo"), "Redis 7.0 does not know CLIENT SETINFO: {rule}");
    }
}
