//! Everything that speaks Redis Streams: connections by role, consumer
//! groups, reading and claiming entries, and the transactions that
//! acknowledge or dead-letter them.

pub mod acl;
mod backoff;
mod commit;
mod committer;
mod conn;
mod error;
mod group;
pub mod hygiene;
mod inbox;
mod info;
mod lease;
pub mod order;
mod read;
mod relay;
mod replicas;
mod reply;
pub mod retention;
mod script;
pub mod slot;
pub mod unread;

pub(crate) use backoff::{Backoff, ERROR_PAUSE};
pub use commit::{
    Commit, CommitAndRead, Committed, ERROR_REPLY_TYPE, REPLY_TTL_MS, ReadAfter, Relayed, WriteKind, commit_and_read,
    commit_batch, commit_one, outbox,
};
pub use committer::{Committer, Refill, Room};
pub use conn::{Conn, Redis, redact};
pub use error::{Context, Error, ErrorKind};
pub use group::ensure_group;
pub(crate) use inbox::move_to_inbox;
pub use inbox::{RANGE_PAGE, add_to_inbox, delete, latest, range, range_page};
pub use info::{EntryState, GroupInfo, entry_state, group_info, length};
pub use lease::Lease;
pub use read::{Delivery, Page, Reader, claim, own_pending, take_over, unblock};
pub use relay::Relay;
pub(crate) use replicas::Replicas;
pub use reply::read_reply;
