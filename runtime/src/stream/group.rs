//! Consumer groups: one per handler per stream.

use super::error::{Context, Error};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

static GROUP: LazyLock<super::script::Script> = LazyLock::new(|| super::script::Script::new(include_str!("group.lua")));

/// Creates `group` on `stream` (and the stream itself if missing). A group
/// that already exists is fine. A new group starts at the beginning of the
/// stream, so events published before a handler first ran are not skipped,
/// and Redis counts the entries already removed as read, so that those
/// removed later before the group reads them can be told
/// ([`super::unread`]).
pub async fn ensure_group(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<(), Error> {
    let _made: u8 = GROUP
        .key(stream)
        .arg(group)
        .invoke_async(conn)
        .await
        .context(|| format!("XGROUP CREATE of group {group} on stream {stream}"))?;
    Ok(())
}
