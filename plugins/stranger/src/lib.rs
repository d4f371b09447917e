//! `stranger`: a test fixture that exports a proper handler but imports an
//! interface Sluice does not provide (`test:stranger/gadget`). The host must
//! refuse to load it, naming the missing import.

wit_bindgen::generate!({
    path: "../../wit",
    inline: "
        package test:stranger;

        interface gadget {
            poke: func();
        }

        world stranger {
            import gadget;
            export sluice:plugin/handler@0.1.0;
        }
    ",
    world: "test:stranger/stranger",
    generate_all,
});

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::types::{Event, Failure};

/// Pokes the gadget, which no host has.
struct Stranger;

impl Guest for Stranger {
    fn handle(_: Event) -> Result<(), Failure> {
        test::stranger::gadget::poke();
        Ok(())
    }
}

export!(Stranger);
