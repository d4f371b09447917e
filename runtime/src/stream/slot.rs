//! Redis Cluster hash slots: which of the 16 384 slots a key lives in, and
//! how to name a key of Sluice's own so that it lands in the same slot as a
//! given stream (so one script can write both).

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, when not empty), or of the whole key.
pub fn of(key: &str) -> u16 {
    crc16(hash_tag(key).unwrap_or(key).as_bytes()) % SLOTS
}

/// The hash tag of `key`, if it has one.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// A `{tag}` that puts a key in the same slot as `key`: `key`'s own hash tag,
/// or `key` itself when that works, or failing both (a key with stray
/// braces) the first decimal number whose slot matches.
pub fn tag_for(key: &str) -> String {
    let tag = hash_tag(key).unwrap_or(key);
    let candidate = format!("{{{tag}}}");
    if of(&candidate) == of(key) {
        return candidate;
    }
    slot_tag(of(key))
}

/// The `{tag}` of `slot` that Sluice names its per-slot keys with: the first
/// decimal number in that slot.
pub fn slot_tag(slot: u16) -> String {
    (0u32..)
        .map(|n| n.to_string())
        .find(|n| of(n) == slot)
        .map(|n| format!("{{{n}}}"))
        .expect("every slot has a number")
}

/// CRC16/XMODEM, as Redis Cluster computes it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(of("foo"), 12182);
        assert_eq!(of("hello"), 866);
        assert_eq!(of("{user1000}.following"), of("user1000"));
        assert_eq!(of("{}x"), crc16(b"{}x") % SLOTS, "an empty tag is no tag");
    }

    #[test]
    fn a_tag_lands_in_the_keys_slot() {
        for key in ["orders", "{shop}:orders", "a{}b", "x}{y", "{{a}}"] {
            let tag = tag_for(key);
            assert_eq!(of(&format!("sluice:outbox:{tag}")), of(key), "{key} -> {tag}");
        }
        assert_eq!(tag_for("orders"), "{orders}");
        assert_eq!(tag_for("{shop}:orders"), "{shop}");
    }

    #[test]
    fn every_slot_has_a_tag() {
        for slot in [0, 1, 866, 12182, SLOTS - 1] {
            assert_eq!(of(&slot_tag(slot)), slot);
        }
    }
}
