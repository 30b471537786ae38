//! Fuzz the client-frame parser and everything a subscribe/signin frame is decoded into.
//!
//! Run with: `cargo +nightly fuzz run frame_parse` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockudo_core::channel::ChannelName;
use sockudo_core::protocol::frame::{PresenceChannelData, SigninData, SigninUserData, SubscribeData, UnsubscribeData};
use sockudo_core::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = ChannelName::parse(text);
    let Ok(frame) = ClientFrame::parse(text, 64 * 1024) else { return };
    let _ = sockudo_core::protocol::events::classify(&frame.event);
    if let Ok(sub) = frame.system_data::<SubscribeData>() {
        let _ = ChannelName::parse(&sub.channel);
        if let Some(cd) = sub.channel_data.as_deref() {
            let _ = serde_json::from_str::<PresenceChannelData>(cd);
        }
    }
    let _ = frame.system_data::<UnsubscribeData>();
    if let Ok(signin) = frame.system_data::<SigninData>() {
        let _ = serde_json::from_str::<SigninUserData>(&signin.user_data);
    }
});
