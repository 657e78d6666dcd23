//! Token-list parsing: never panics, and an error never shows a token.
//!
//! Each `§` in the input stands for a planted token value; whatever the
//! input, the error message must not contain it.
#![no_main]
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "CANARY-7f3a9";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.replace('§', &format!("\"{CANARY}\""));
    let utc = chrono::FixedOffset::east_opt(0).unwrap();
    if let Err(error) = chatgpt_gateway::tokens::format::parse(&text, utc) {
        let message = error.to_string();
        // A name is a label, shown on purpose; a canary there is no leak.
        let as_name = text.contains(&format!("\"name\": \"{CANARY}\""))
            || text.contains(&format!("\"name\":\"{CANARY}\""));
        assert!(as_name || !message.contains(CANARY), "{message}");
    }
});
