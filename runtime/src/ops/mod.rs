//! Operator commands on a running system's Redis: dead letters (`sluice
//! dlq`), replay, and status.

pub mod dlq;
pub mod redrive;
mod session;
pub mod status;
pub mod time;

pub use session::Session;
