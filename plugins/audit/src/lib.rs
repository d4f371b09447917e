//! `audit`: logs every event it is given, whatever its type.
//!
//! The smallest useful handler: no parsing, no publishing, never fails.
//! Subscribe it to several streams to get one audit line per entry.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log};
use sluice::plugin::types::{Event, Failure};

/// The handler; see the crate documentation.
struct Audit;

impl Guest for Audit {
    fn handle(event: Event) -> Result<(), Failure> {
        log(
            Level::Info,
            &format!(
                "{} {} {} attempt {}",
                event.stream, event.id, event.event_type, event.attempt
            ),
        );
        Ok(())
    }
}

export!(Audit);
