//! Sluice's Lua scripts, and how they are run: by hash (`EVALSHA`) and,
//! where Redis does not have a script (after a restart, or on a node that
//! never loaded it, promoted in a failover), by body (`EVAL`), on the node
//! that serves its keys, which keeps it for the next calls. Not by `SCRIPT
//! LOAD` then `EVALSHA`, as redis-rs's own scripts do: in a Redis Cluster,
//! redis-rs sends `SCRIPT LOAD` to every node, replicas included, and it
//! fails while any of them is loading its data (a node restarting, as in a
//! rolling upgrade), so every commit through a script would fail until that
//! node had loaded.

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};

/// Lua functions for stream ids (`before`, `next_id`), put before the
/// body of each script that compares or steps them.
pub const IDS: &str = include_str!("ids.lua");

/// A script: its body and its SHA-1.
pub struct Script {
    code: String,
    hash: String,
}

impl Script {
    /// The script whose body is `code`.
    pub fn new(code: &str) -> Script {
        Script { code: code.to_owned(), hash: redis::Script::new(code).get_hash().to_owned() }
    }

    /// Its SHA-1, as `EVALSHA` takes it.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// A call of it with `key` as its first key.
    pub fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut call = self.prepare_invoke();
        call.key(key);
        call
    }

    /// A call of it with no keys or arguments yet.
    pub fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation { script: self, keys: Vec::new(), args: Vec::new() }
    }

    /// `call`, an `EVALSHA` of this script, as an `EVAL` of its body: the
    /// same keys and arguments.
    pub fn by_body(&self, call: &Cmd) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(&self.code);
        for arg in call.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }
}

/// A call of a [`Script`], with its keys and arguments.
pub struct Invocation<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    /// Adds a key.
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The `EVALSHA` that runs it.
    pub fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.script.hash).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    /// The `EVAL` that runs it by body.
    pub fn by_body(&self) -> Cmd {
        self.script.by_body(&self.cmd())
    }

    /// Runs it by hash, or by body where Redis does not have it.
    pub async fn invoke_async<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        let call = self.cmd();
        match call.query_async(conn).await {
            Err(e) if is_no_script(&e) => self.script.by_body(&call).query_async(conn).await,
            other => other,
        }
    }
}

/// Whether Redis answered that it does not have the script (`NOSCRIPT`).
pub fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_by_body_has_the_same_keys_and_arguments() {
        let script = Script::new("return KEYS[1]");
        let mut call = script.key("k");
        call.arg("a").arg(b"b\0".as_slice());
        let by_hash = call.cmd();
        let by_body = script.by_body(&by_hash);
        let words = |cmd: &Cmd| -> Vec<Vec<u8>> {
            cmd.args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.to_vec(),
                    _ => b"<not simple>".to_vec(),
                })
                .collect()
        };
        let hash = script.hash().as_bytes().to_vec();
        assert_eq!(
            words(&by_hash),
            [b"EVALSHA".to_vec(), hash, b"1".to_vec(), b"k".to_vec(), b"a".to_vec(), b"b\0".to_vec()]
        );
        let body = b"return KEYS[1]".to_vec();
        assert_eq!(
            words(&by_body),
            [b"EVAL".to_vec(), body, b"1".to_vec(), b"k".to_vec(), b"a".to_vec(), b"b\0".to_vec()]
        );
    }
}
