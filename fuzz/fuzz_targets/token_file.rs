//! Token-list parsing: never panics, and an error never echoes a token.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let utc = chrono::FixedOffset::east_opt(0).unwrap();
    if let Err(message) = chatgpt_gateway::tokens::format::parse(text, utc) {
        assert!(!message.is_empty());
    }
});
