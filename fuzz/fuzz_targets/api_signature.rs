//! Fuzz HTTP API query parsing and signature verification.
//!
//! Run with: `cargo +nightly fuzz run api_signature` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockudo_core::auth::{verify_channel_auth, verify_user_auth, ApiQuery};

fuzz_target!(|data: &[u8]| {
    // Split the input into a query string and a body so both are explored.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (query, body) = data.split_at(split);
    let Ok(query) = std::str::from_utf8(query) else { return };
    if let Ok(q) = ApiQuery::parse(query) {
        let _ = q.verify("secret", "POST", "/apps/1/events", body, 1_353_088_179, 600);
        let _ = q.verify("secret", "GET", "/apps/1/channels", &[], u64::MAX, 600);
    }
    let _ = verify_channel_auth("key", "secret", "1.1", "private-a", None, query);
    let _ = verify_user_auth("key", "secret", "1.1", "{}", query);
});
