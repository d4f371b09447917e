//! The one error type of everything that speaks Redis: which command failed
//! on which key, and why. Callers match on its kind ([`Error::is_no_group`],
//! ...), never on its text.

use std::fmt;

/// A Redis command that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {kind}")]
pub struct Error {
    /// The command and its key, e.g. `XPENDING on stream orders group payment`.
    pub what: String,
    /// Why.
    pub kind: ErrorKind,
}

/// Why a Redis command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorKind {
    /// Redis answered with an error, or could not be reached. A refusal
    /// of something a script called says where to find what was refused.
    #[error("{0}{hint}", hint = if refused_in_script(.0) { ACL_LOG } else { "" })]
    Redis(#[from] redis::RedisError),
    /// The reply did not have the shape Sluice expects.
    #[error("unexpected reply: {0}")]
    Reply(String),
    /// The task that sends these commands stopped (the host is shutting down).
    #[error("stopped")]
    Stopped,
    /// The write landed on its master, but no replica of it acknowledged
    /// the write in time (`stream/replicas.rs`), so what it replaces is kept.
    #[error("no replica of its master acknowledged the write within {} ms (its link is down, or it is resynchronising)", super::replicas::WAIT_TIMEOUT.as_millis())]
    Unreplicated,
}

/// How Redis 7 begins its error when a script calls a command, or touches a
/// key, that the script's user may not (the command's own refusal would be
/// `NOPERM`): "The user executing the script can't run this command or
/// subcommand", "... can't access at least one of the keys".
const REFUSED_IN_SCRIPT: &str = "The user executing the script can't";

/// What such a refusal adds to Redis's words, which name neither the
/// command nor the key.
const ACL_LOG: &str = " (ACL LOG on the server names the command or key refused)";

/// Whether `e` is Redis's refusal of a command, or key, a script called.
fn refused_in_script(e: &redis::RedisError) -> bool {
    e.detail().is_some_and(|d| d.contains(REFUSED_IN_SCRIPT))
}

impl Error {
    /// An error of `what` (the command and its key).
    pub fn new(what: impl fmt::Display, kind: impl Into<ErrorKind>) -> Error {
        Error { what: what.to_string(), kind: kind.into() }
    }

    /// A reply of an unexpected shape from `what`.
    pub fn reply(what: impl fmt::Display, reply: &redis::Value) -> Error {
        Error::new(what, ErrorKind::Reply(format!("{reply:?}")))
    }

    /// The Redis error behind it, if Redis answered or the connection failed.
    pub fn redis(&self) -> Option<&redis::RedisError> {
        match &self.kind {
            ErrorKind::Redis(e) => Some(e),
            ErrorKind::Reply(_) | ErrorKind::Stopped | ErrorKind::Unreplicated => None,
        }
    }

    /// The error code Redis answered with (`NOGROUP`, `NOPERM`, ...).
    pub fn code(&self) -> Option<&str> {
        self.redis().and_then(|e| e.code())
    }

    /// The stream or its consumer group does not exist (deleted, or Redis
    /// lost its data).
    pub fn is_no_group(&self) -> bool {
        self.code() == Some("NOGROUP")
    }

    /// The Redis user may not run this command on this key (an ACL rule),
    /// also when the command was called by a script: Redis 7 then answers
    /// with a plain `ERR` that says so (`REFUSED_IN_SCRIPT`), which no try
    /// again can change either.
    pub fn is_no_permission(&self) -> bool {
        self.code() == Some("NOPERM") || self.redis().is_some_and(refused_in_script)
    }

    /// Whether the command may have run although this error came back: the
    /// connection failed or timed out before its reply arrived, or the
    /// reply made no sense. Not when Redis answered with an error code
    /// (`LOADING`, `TRYAGAIN`, `NOPERM`, ...) or the sender had stopped.
    pub fn reply_lost(&self) -> bool {
        match &self.kind {
            ErrorKind::Redis(e) => e.code().is_none(),
            ErrorKind::Reply(_) | ErrorKind::Unreplicated => true,
            ErrorKind::Stopped => false,
        }
    }

    /// Whether Redis is unable to take the command only for now: it could
    /// not be reached or did not answer in time, or it answered that it is
    /// loading its data, failing over or resharding (`LOADING`,
    /// `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`), out of memory
    /// (`OOM`) or busy with a script (`BUSY`), or a new connection's login
    /// was refused (an ACL user being changed). The same command sent later
    /// may go through; an error in the command itself (a script's bug, a
    /// missing permission) would not.
    pub fn is_transient(&self) -> bool {
        let ErrorKind::Redis(e) = &self.kind else { return false };
        match e.code() {
            Some(code) => {
                matches!(code, "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY" | "OOM" | "BUSY")
            }
            None => super::conn::connection_failed(e) || e.kind() == redis::ErrorKind::AuthenticationFailed,
        }
    }

    /// The server that answered is a replica (`READONLY`): a failover kept
    /// the address of the primary it demoted, and this connection will be
    /// refused writes until it is replaced by one that reaches the new
    /// primary.
    pub fn reached_a_replica(&self) -> bool {
        self.redis().is_some_and(super::conn::reached_a_replica)
    }

    /// The key does not exist (`XINFO` on a missing stream).
    pub fn is_no_such_key(&self) -> bool {
        self.redis().is_some_and(|e| e.code() == Some("ERR") && e.detail() == Some("no such key"))
    }
}

/// Names the command and key of a failed Redis call.
pub trait Context<T> {
    /// The error, if any, as an [`Error`] of `what`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for redis::RedisResult<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::new(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis's refusal inside a script names nothing: the error says where
    /// to look. Any other error is shown as Redis gave it.
    #[test]
    fn a_refusal_inside_a_script_points_to_the_acl_log() {
        let refused = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "The user executing the script can't run this command or subcommand script: 5b1e…".to_owned(),
        ));
        let shown = Error::new("relaying outbox o to t", refused).to_string();
        assert!(shown.contains("can't run this command") && shown.ends_with(ACL_LOG), "{shown}");
        let other = redis::RedisError::from((redis::ErrorKind::Io, "broken pipe", "gone".to_owned()));
        assert!(!Error::new("XADD", other).to_string().contains("ACL LOG"));
    }
}
