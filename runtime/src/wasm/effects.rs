//! What a delivery wants done if it succeeds: its publishes and its
//! key-value writes, committed together with the ack.

/// An event a handler published, written only if the handler succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The target stream (granted in config).
    pub stream: String,
    /// The new entry's `type`.
    pub event_type: String,
    /// The new entry's `data`.
    pub data: Vec<u8>,
}

/// A buffered key-value write. Keys are the handler's own (the host adds the
/// `sluice:kv:<handler>:` prefix when committing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    /// `kv.set`: store `value` under `key`.
    Set {
        /// The handler's key.
        key: String,
        /// The value to store.
        value: Vec<u8>,
        /// When it expires, in ms from the commit; `None`: never.
        ttl_ms: Option<u64>,
    },
    /// `kv.delete`: remove `key`.
    Delete {
        /// The handler's key.
        key: String,
    },
}

/// Everything a successful delivery commits along with its ack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The events it published, in order.
    pub publishes: Vec<Publish>,
    /// Its key-value writes, in order.
    pub kv: Vec<KvWrite>,
    /// Its answer to the request it handled (`host.reply`): `stream` is the
    /// request's `reply_to`.
    pub reply: Option<Publish>,
}

/// What handler `handler`'s key-value keys start with: `sluice:kv:<handler>:`;
/// with a hash `tag` (in a cluster), `sluice:kv:<tag>:<handler>:`.
pub fn kv_prefix(handler: &str, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("sluice:kv:{tag}:{handler}:"),
        None => format!("sluice:kv:{handler}:"),
    }
}
