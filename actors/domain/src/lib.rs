//! Aisle's plain domain types, shared by every actor family, the node, the trainer and the load generator.
//!
//! Nothing here is async or does I/O beyond reading and writing bundle bytes; everything is deterministic so that
//! the node, the trainer and the tests agree on ids, hashes and the demo world.
//!
//! - [`request`]: who asks, where and how (surface, channel, shopper attributes).
//! - [`event`]: what shoppers do (views, searches, carts, store visits) as the session and the trainer see it.
//! - [`catalog`]: items, categories, brands and offers, indexed for serving.
//! - [`bundle`]: the envelope of every versioned artifact (format version, version, content hash, created-at).
//! - [`demo`]: the deterministic demo world a node serves when it is given no data.
//! - [`session`]: the read-only view of a session that ranking works from.
//! - [`hash`] and [`rng`]: stable hashing (assignment, placement), and a small seeded generator with a Zipf sampler
//!   (the demo world, the trainer's sampling, the load generator's request streams).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod catalog;
pub mod demo;
pub mod event;
pub mod hash;
pub mod request;
pub mod rng;
pub mod session;

/// Milliseconds since the Unix epoch.
pub type TimestampMs = i64;

/// The longest id (shopper, item, store, request) the API accepts, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The first character of `text` that ids and free text may not hold, if any: control characters (C0, DEL, C1 —
/// NUL, newlines and escapes among them) and the Unicode bidirectional controls (U+061C, U+200E, U+200F,
/// U+202A–U+202E, U+2066–U+2069), which make text shown on a screen or in a log read other than it is.
pub fn forbidden_char(text: &str) -> Option<char> {
    // Printable ASCII, the usual id, is checked a byte at a time.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    text.chars().find(|&c| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as TimestampMs)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::forbidden_char;

    #[test]
    fn control_and_bidi_characters_are_forbidden_and_other_text_is_not() {
        for ok in ["shopper-1", "Łódź store", "caffè latte", "a b", "日本", ""] {
            assert_eq!(forbidden_char(ok), None, "{ok:?}");
        }
        for (bad, c) in [
            ("a\0b", '\0'),
            ("line\nbreak", '\n'),
            ("tab\t", '\t'),
            ("esc\u{1b}[31m", '\u{1b}'),
            ("del\u{7f}", '\u{7f}'),
            ("c1\u{85}", '\u{85}'),
            ("evil\u{202E}gpj.exe", '\u{202E}'),
            ("iso\u{2066}late", '\u{2066}'),
            ("mark\u{200F}", '\u{200F}'),
            ("arabic\u{061C}", '\u{061C}'),
        ] {
            assert_eq!(forbidden_char(bad), Some(c), "{bad:?}");
        }
    }
}
