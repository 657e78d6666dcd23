//! What the meter reads from a stream event that carries no usage: the
//! model, and the length of the content it streamed (for an estimate if the
//! stream is cut).
//!
//! Every event of a stream passes here, so it is read twice over:
//!
//! - [`skim`], one pass over the bytes for the shape OpenAI sends (an
//!   object whose names have no escapes), checking the JSON as it goes and
//!   building nothing. Anything it is not sure of (an escape in a name, a
//!   repeated member it reads, a wrong type, invalid UTF-8, nesting past
//!   [`MAX_DEPTH`]) makes it give up, never guess; so does a member named
//!   `usage`, at any depth, which only a tree reads;
//! - [`light`], the serde view of the same members, when it gives up.
//!
//! So [`seen`] answers exactly as the serde view does, which the tests hold
//! it to; an event neither can take is read as a tree by the caller.

use std::borrow::Cow;

/// What an event streamed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The event's `model`.
    pub model: Option<Cow<'a, str>>,
    /// Bytes of generated content: each choice's `delta.content` (or its
    /// `text`), and a Responses `response.output_text.delta`'s `delta`.
    pub chars: usize,
}

/// What an event without usage streamed; `None` for an event that can
/// carry usage (`"usage"` in it), or a shape neither reader takes: those
/// are read as a tree.
pub fn seen(data: &[u8]) -> Option<Seen<'_>> {
    skim(data).or_else(|| match super::find::usage_key(data) {
        Some(_) => None,
        None => light(data),
    })
}

/// The deepest nesting [`skim`] follows (serde_json's limit is 128).
pub const MAX_DEPTH: usize = 100;

/// One pass over the bytes; `None` when unsure (see the module's notes).
pub fn skim(data: &[u8]) -> Option<Seen<'_>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut s = Skim { b: data, at: 0 };
    s.ws();
    s.eat(b'{')?;
    let (mut model, mut chars, mut kind, mut delta) = (None, 0usize, None, None);
    let mut seen = [false; 4];
    s.members(|s, name| {
        let slot = match name {
            b"model" => 0,
            b"choices" => 1,
            b"type" => 2,
            b"delta" => 3,
            _ => return s.value(1),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            0 => model = spanned(text, s.plain_or_null()?)?,
            1 => chars = s.choices()?,
            2 => kind = spanned(text, s.plain_or_null()?)?,
            _ => delta = s.length_or_null()?,
        }
        Some(())
    })?;
    s.ws();
    if s.at != data.len() {
        return None;
    }
    if kind == Some("response.output_text.delta") {
        chars = chars.checked_add(delta.unwrap_or(0))?;
    }
    Some(Seen {
        model: model.map(Cow::Borrowed),
        chars,
    })
}

/// A string's text by its span (`None` in, `Some(None)` out: null).
fn spanned(text: &str, span: Option<(usize, usize)>) -> Option<Option<&str>> {
    match span {
        Some((from, to)) => text.get(from..to).map(Some),
        None => Some(None),
    }
}

/// The bytes a string holds as they are: not a quote, an escape or a
/// control character.
static AS_IS: [bool; 256] = {
    let mut table = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = false;
        b += 1;
    }
    table[b'"' as usize] = false;
    table[b'\\' as usize] = false;
    table
};

struct Skim<'a> {
    b: &'a [u8],
    at: usize,
}

impl Skim<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The members of an object whose `{` was eaten, each name handed to
    /// `each` with the cursor at its value. A name with an escape is not
    /// taken (it could spell a member that is read).
    fn members(&mut self, mut each: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.list(b'}', |s| {
            let (from, to) = s.plain()?;
            let b = s.b;
            let name = b.get(from..to)?;
            if name == b"usage" {
                // Usage is read from a tree (see [`super::read`]).
                return None;
            }
            s.ws();
            s.eat(b':')?;
            s.ws();
            each(s, name)
        })
    }

    /// The elements of an array whose `[` was eaten.
    fn elements(&mut self, each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.list(b']', each)
    }

    /// Items separated by commas up to `close` (its opening eaten), each
    /// read by `item` with the cursor at its start.
    fn list(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                end if end == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `choices`: null, or an array of objects; the content they streamed.
    fn choices(&mut self) -> Option<usize> {
        if self.null() {
            return Some(0);
        }
        self.eat(b'[')?;
        let mut chars = 0usize;
        self.elements(|s| {
            s.eat(b'{')?;
            // A choice's `delta` (null as absent) counts, else its `text`.
            let (mut delta, mut text) = (None, None);
            let mut seen = [false; 2];
            s.members(|s, name| match name {
                b"delta" if !std::mem::replace(&mut seen[0], true) => {
                    if !s.null() {
                        s.eat(b'{')?;
                        let mut content = None;
                        s.members(|s, name| match name {
                            b"content" if content.is_none() => {
                                content = Some(s.length_or_null()?.unwrap_or(0));
                                Some(())
                            }
                            b"content" => None,
                            _ => s.value(4),
                        })?;
                        delta = Some(content.unwrap_or(0));
                    }
                    Some(())
                }
                b"text" if !std::mem::replace(&mut seen[1], true) => {
                    text = s.length_or_null()?;
                    Some(())
                }
                b"delta" | b"text" => None,
                _ => s.value(3),
            })?;
            chars = chars.checked_add(delta.or(text).unwrap_or(0))?;
            Some(())
        })?;
        Some(chars)
    }

    fn null(&mut self) -> bool {
        let null = self.b.get(self.at..self.at + 4) == Some(b"null");
        if null {
            self.at += 4;
        }
        null
    }

    /// A string without escapes (its bytes' span), or null.
    fn plain_or_null(&mut self) -> Option<Option<(usize, usize)>> {
        if self.null() {
            return Some(None);
        }
        self.plain().map(Some)
    }

    /// A string without escapes: the span of its bytes.
    fn plain(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let from = self.at;
        self.at += self.run();
        self.eat(b'"')?;
        Some((from, self.at - 1))
    }

    /// How many bytes from the cursor a string holds as they are (up to a
    /// quote, an escape or a control character).
    fn run(&self) -> usize {
        let rest = self.b.get(self.at..).unwrap_or_default();
        rest.iter()
            .position(|&b| !AS_IS[usize::from(b)])
            .unwrap_or(rest.len())
    }

    /// A string's length once its escapes are read, or null.
    fn length_or_null(&mut self) -> Option<Option<usize>> {
        if self.null() {
            return Some(None);
        }
        self.string(true).map(Some)
    }

    /// A string, checked; with `measure`, its decoded length in bytes (a
    /// surrogate escape is then not taken: serde refuses a lone one).
    fn string(&mut self, measure: bool) -> Option<usize> {
        self.eat(b'"')?;
        let mut len = 0usize;
        loop {
            let run = self.run();
            self.at += run;
            len += run;
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(len);
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            self.at += 1;
                            len += 1;
                        }
                        b'u' => {
                            let hex = self.b.get(self.at + 1..self.at + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return None;
                            }
                            let unit = u32::from_str_radix(hex, 16).ok()?;
                            self.at += 5;
                            len += match unit {
                                0xD800..=0xDFFF if measure => return None,
                                0..=0x7F => 1,
                                0x80..=0x7FF => 2,
                                _ => 3,
                            };
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// Any value at nesting `depth`, checked and skipped.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(false).map(drop),
            b'{' if depth < MAX_DEPTH => {
                self.at += 1;
                self.members(|s, _| s.value(depth + 1))
            }
            b'[' if depth < MAX_DEPTH => {
                self.at += 1;
                self.elements(|s| s.value(depth + 1))
            }
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.b.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digit()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digit()?;
        }
        Some(())
    }

    /// At least one digit.
    fn digit(&mut self) -> Option<()> {
        self.peek()?.is_ascii_digit().then(|| self.digits())
    }

    fn digits(&mut self) {
        let rest = self.b.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
    }
}

/// The serde view of the members [`skim`] reads: borrowed, the rest skipped.
#[derive(serde::Deserialize)]
struct Light<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<LightChoice<'a>>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct LightChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<LightDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct LightDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// What the serde view reads, or `None` if it does not take the event.
pub fn light(data: &[u8]) -> Option<Seen<'_>> {
    let light = serde_json::from_slice::<Light<'_>>(data).ok()?;
    let mut chars = 0usize;
    for choice in light.choices.iter().flatten() {
        chars = chars.saturating_add(match (&choice.delta, &choice.text) {
            (Some(delta), _) => delta.content.as_deref().map_or(0, str::len),
            (None, Some(text)) => text.len(),
            (None, None) => 0,
        });
    }
    if light.kind.as_deref() == Some("response.output_text.delta") {
        chars = chars.saturating_add(light.delta.as_deref().map_or(0, str::len));
    }
    Some(Seen {
        model: light.model,
        chars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The skim either gives up or says what the serde view says.
    fn agrees(data: &[u8]) {
        if let Some(fast) = skim(data) {
            assert_eq!(
                Some(&fast),
                light(data).as_ref(),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    const CHUNK: &str = r#"{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}"#;

    #[test]
    fn the_shapes_openai_streams_are_skimmed() {
        let cases: &[(&str, Option<&str>, usize)] = &[
            (CHUNK, Some("gpt-4o-mini-2024-07-18"), 5),
            (
                r#"{"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                Some("m"),
                0,
            ),
            (
                r#"{"model":"m","choices":[{"delta":{"content":"a\nb\"c\u00e9\u4e2d"}}]}"#,
                Some("m"),
                1 + 1 + 1 + 1 + 1 + 2 + 3,
            ),
            (
                r#"{"model":"m","choices":[{"delta":{"content":"中文"},"finish_reason":null},{"delta":{"content":"ab"}}]}"#,
                Some("m"),
                8,
            ),
            (
                r#"{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct","choices":[{"text":"abc","index":0,"logprobs":null,"finish_reason":null}]}"#,
                Some("gpt-3.5-turbo-instruct"),
                3,
            ),
            (
                r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi there","logprobs":[]}"#,
                None,
                8,
            ),
            (
                r#"{"delta":"xyz","type":"response.output_text.delta"}"#,
                None,
                3,
            ),
            (r#"{"type":"response.created","delta":"xyz"}"#, None, 0),
            (r#" { "model" : null , "choices" : null } "#, None, 0),
            (
                r#"{"choices":[{"delta":null,"text":"four"},{"delta":{},"text":"no"}]}"#,
                None,
                4,
            ),
            (
                r#"{"x":[1,-0.5e+3,true,false,null,{"a":[]},"\ud83d\ude00"],"choices":[]}"#,
                None,
                0,
            ),
        ];
        for (data, model, chars) in cases {
            let fast = skim(data.as_bytes()).unwrap_or_else(|| panic!("not skimmed: {data}"));
            assert_eq!(
                (fast.model.as_deref(), fast.chars),
                (*model, *chars),
                "{data}"
            );
            agrees(data.as_bytes());
        }
    }

    #[test]
    fn what_the_skim_is_unsure_of_is_left_to_serde() {
        let cases: &[&str] = &[
            // A name with an escape could spell one that is read.
            r#"{"mod\u0065l":"m"}"#,
            // A repeated member (serde refuses; the caller reads a tree).
            r#"{"model":"a","model":"b"}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            // Wrong types.
            r#"{"model":7}"#,
            r#"{"choices":{}}"#,
            r#"{"choices":[1]}"#,
            r#"{"choices":[{"delta":"text"}]}"#,
            r#"{"delta":{"text":"x"},"type":"response.output_text.delta"}"#,
            // A model with an escape is serde's to decode.
            r#"{"model":"a\/b"}"#,
            // A lone surrogate in content (serde refuses it).
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            // Not JSON, or not an object.
            r#"{"model":"m""#,
            r#"{"model":"m"} x"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1,}"#,
            r#"[1,2]"#,
            "",
        ];
        for data in cases {
            assert_eq!(skim(data.as_bytes()), None, "{data}");
            agrees(data.as_bytes());
        }
        assert_eq!(skim(b"{\"a\":\"\xff\"}"), None);
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(skim(deep.as_bytes()), None);
        let shallow = format!("{{\"a\":{}{}}}", "[".repeat(50), "]".repeat(50));
        assert!(skim(shallow.as_bytes()).is_some());
    }

    #[test]
    fn seen_falls_back_to_serde() {
        let odd = br#"{"model":"a\/b","choices":[{"delta":{"content":"xy"}}]}"#;
        assert_eq!(skim(odd), None);
        let seen = seen(odd).unwrap();
        assert_eq!((seen.model.as_deref(), seen.chars), (Some("a/b"), 2));
        assert_eq!(super::seen(br#"{"model":"a","model":"b"}"#), None);
        // What can carry usage is left to the tree, wherever it is.
        for data in [
            &br#"{"model":"m","choices":[],"usage":{"prompt_tokens":1}}"#[..],
            br#"{"type":"response.completed","response":{"usage":null}}"#,
            br#"{"model":"a\/b","usage":null}"#,
        ] {
            assert_eq!(skim(data), None);
            assert_eq!(super::seen(data), None);
        }
        // "usage" as a value is only a value.
        let value = br#"{"model":"m","choices":[{"delta":{"content":"usage"}}]}"#;
        assert_eq!(skim(value).map(|s| s.chars), Some(5));
    }

    /// Pieces events are made of, put together at random.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"model\"",
            "\"choices\"",
            "\"delta\"",
            "\"content\"",
            "\"text\"",
            "\"type\"",
            "\"response.output_text.delta\"",
            "\"m\"",
            "\"a\\nb\"",
            "\"\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"中\"",
            "null",
            "true",
            "0",
            "-1.5e3",
            "01",
            "\"x\"",
            "\\",
        ])
    }

    proptest! {
        #[test]
        fn any_bytes_are_skimmed_as_serde_reads_them_or_not_at_all(
            pieces in prop::collection::vec(piece(), 0..40)
        ) {
            agrees(pieces.concat().as_bytes());
        }

        #[test]
        fn a_real_chunk_cut_or_spoiled_anywhere_is_never_misread(
            at in 0usize..CHUNK.len(), byte in any::<u8>(), cut in any::<bool>()
        ) {
            let mut data = CHUNK.as_bytes().to_vec();
            if cut {
                data.truncate(at);
            } else {
                data[at] = byte;
            }
            agrees(&data);
        }

        #[test]
        fn generated_events_agree(
            model in prop::option::of("[a-z0-9.\\-]{0,12}"),
            contents in prop::collection::vec(prop::option::of(r#"([^"\\\x00-\x1f]|\\n|\\"|\\u00e9){0,8}"#), 0..4),
            extra in prop::option::of("[1-9][0-9]{0,4}"),
        ) {
            let choices: Vec<String> = contents.iter().enumerate().map(|(i, c)| match c {
                Some(c) => format!(r#"{{"index":{i},"delta":{{"content":"{c}"}},"finish_reason":null}}"#),
                None => format!(r#"{{"index":{i},"delta":{{}},"finish_reason":"stop"}}"#),
            }).collect();
            let mut data = String::from("{");
            if let Some(model) = &model {
                data.push_str(&format!(r#""model":"{model}","#));
            }
            if let Some(extra) = &extra {
                data.push_str(&format!(r#""created":{extra},"#));
            }
            data.push_str(&format!(r#""choices":[{}]}}"#, choices.join(",")));
            // Every such event is OpenAI's shape: skimmed, not left to serde.
            prop_assert!(skim(data.as_bytes()).is_some(), "{}", data);
            agrees(data.as_bytes());
        }
    }
}
