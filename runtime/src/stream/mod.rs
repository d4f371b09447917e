//! Everything that speaks Redis Streams: connections by role, consumer
//! groups, reading and claiming entries, and the transactions that
//! acknowledge or dead-letter them.

mod commit;
mod committer;
mod conn;
mod error;
mod group;
mod inbox;
mod info;
mod read;
mod reply;

pub use commit::{Commit, Committed, WriteKind, commit_batch, commit_one};
pub use committer::Committer;
pub use conn::{Redis, redact};
pub use error::{Context, Error, ErrorKind};
pub use group::ensure_group;
pub use inbox::{add_to_inbox, delete, move_to_inbox, range};
pub use info::{GroupInfo, group_info, length};
pub use read::{Delivery, Reader, autoclaim, claim, own_pending, unblock};
