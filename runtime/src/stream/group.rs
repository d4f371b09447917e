//! Consumer groups: one per handler per stream.

use super::error::{Context, Error};
use redis::aio::ConnectionLike;

/// Creates `group` on `stream` (and the stream itself if missing). A group
/// that already exists is fine. A new group starts at the beginning of the
/// stream, so events published before a handler first ran are not skipped.
pub async fn ensure_group(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<(), Error> {
    let created: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM").query_async(conn).await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e).context(|| format!("XGROUP CREATE of group {group} on stream {stream}")),
    }
}
