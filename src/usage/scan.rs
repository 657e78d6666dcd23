//! The top-level `usage` (and `model`) of a JSON answer of any size, read
//! as it streams past, without holding it: a byte-at-a-time scan of the
//! document's structure (depth, strings, escapes) that keeps only the
//! values of those two top-level keys, each bounded. A gzip or deflate body
//! is inflated on the way ([`Scan::new`]); other encodings are not scanned.

use std::io::Write;

use super::read::{self, Found};

/// The most of one kept value (a `usage` object is a few hundred bytes).
const MAX_VALUE: usize = 64 << 10;

/// The longest top-level key remembered (longer ones are no key we want).
const MAX_KEY: usize = 16;

/// Which kept value is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Usage,
    Model,
}

/// The scan of one document.
#[derive(Debug, Default)]
pub struct TopLevel {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    reading_key: bool,
    key: Vec<u8>,
    /// The key's value is being kept.
    keeping: Option<Kept>,
    value: Vec<u8>,
    usage: Option<Vec<u8>>,
    model: Option<Vec<u8>>,
    /// Not an object, a value over its bound, bytes after the end, or a
    /// top-level key written with escapes (which could spell `usage`).
    failed: bool,
    done: bool,
}

impl TopLevel {
    /// Feeds the next bytes of the document.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.failed {
                return;
            }
            self.byte(b);
        }
    }

    fn keep(&mut self, b: u8) {
        if self.keeping.is_some() {
            if self.value.len() >= MAX_VALUE {
                self.failed = true;
                return;
            }
            self.value.push(b);
        }
    }

    fn finish_value(&mut self) {
        match self.keeping.take() {
            Some(Kept::Usage) => self.usage = Some(std::mem::take(&mut self.value)),
            Some(Kept::Model) => self.model = Some(std::mem::take(&mut self.value)),
            None => {}
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.reading_key {
                if self.key.len() <= MAX_KEY {
                    self.key.push(b);
                }
            } else {
                self.keep(b);
            }
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
                // `"us\u0061ge"` is `usage` to a JSON reader: a key this scan
                // cannot compare makes the document unreadable (charged as such).
                self.failed |= self.reading_key;
            } else if b == b'"' {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    self.key.pop();
                }
            }
            return;
        }
        if self.done {
            if !b.is_ascii_whitespace() {
                self.failed = true;
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth > 1 {
                    self.keep(b);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && b != b'{' {
                    self.failed = true;
                    return;
                }
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                } else {
                    self.keep(b);
                }
            }
            b'}' | b']' => {
                match self.depth {
                    0 => self.failed = true,
                    1 => {
                        self.finish_value();
                        self.done = true;
                    }
                    _ => {
                        self.keep(b);
                        if self.depth == 2 {
                            self.finish_value();
                        }
                    }
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.reading_key = true;
                    self.key.clear();
                } else {
                    self.keep(b);
                }
            }
            b':' if self.depth == 1 => {
                self.expect_key = false;
                self.keeping = match &self.key[..] {
                    b"usage" => Some(Kept::Usage),
                    b"model" => Some(Kept::Model),
                    _ => None,
                };
                self.value.clear();
            }
            b',' if self.depth == 1 => {
                self.finish_value();
                self.expect_key = true;
            }
            _ => self.keep(b),
        }
    }

    /// What the whole document says about usage: `Malformed` when it did
    /// not end as one object, or a kept value was over its bound.
    pub fn found(&self) -> Found {
        if self.failed || !self.done {
            return Found::Malformed;
        }
        let Some(usage) = &self.usage else {
            return Found::Nothing;
        };
        let mut text = b"{\"usage\":".to_vec();
        text.extend_from_slice(usage);
        if let Some(model) = &self.model {
            text.extend_from_slice(b",\"model\":");
            text.extend_from_slice(model);
        }
        text.push(b'}');
        read::usage_in(&text).unwrap_or(Found::Malformed)
    }
}

impl Write for TopLevel {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.feed(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A scan of a body sent with a `Content-Encoding`, inflated on the way.
pub enum Scan {
    /// Identity.
    Plain(TopLevel),
    /// gzip.
    Gzip(Box<flate2::write::MultiGzDecoder<TopLevel>>),
    /// HTTP `deflate` (zlib-wrapped).
    Zlib(Box<flate2::write::ZlibDecoder<TopLevel>>),
    /// Raw deflate, as some servers send `deflate`.
    Deflate(Box<flate2::write::DeflateDecoder<TopLevel>>),
    /// An encoding that is not scanned, or corrupt data.
    Failed,
}

impl Scan {
    /// A scan of a body with `encoding`, whose first bytes are `head`.
    pub fn new(encoding: Option<&str>, head: &[u8]) -> Self {
        let encoding = encoding.unwrap_or("identity").trim().to_ascii_lowercase();
        let scan = TopLevel::default();
        match encoding.as_str() {
            "" | "identity" => Self::Plain(scan),
            "gzip" | "x-gzip" => Self::Gzip(Box::new(flate2::write::MultiGzDecoder::new(scan))),
            "deflate" if head.first().is_some_and(|b| b & 0x0f == 8) => {
                Self::Zlib(Box::new(flate2::write::ZlibDecoder::new(scan)))
            }
            "deflate" => Self::Deflate(Box::new(flate2::write::DeflateDecoder::new(scan))),
            _ => Self::Failed,
        }
    }

    /// Feeds the next bytes of the body as sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        let ok = match self {
            Self::Plain(scan) => {
                scan.feed(bytes);
                true
            }
            Self::Gzip(d) => d.write_all(bytes).is_ok(),
            Self::Zlib(d) => d.write_all(bytes).is_ok(),
            Self::Deflate(d) => d.write_all(bytes).is_ok(),
            Self::Failed => false,
        };
        if !ok {
            *self = Self::Failed;
        }
    }

    /// What the body says about usage, once it has ended.
    pub fn finish(self) -> Found {
        let scan = match self {
            Self::Plain(scan) => Ok(scan),
            Self::Gzip(d) => d.finish(),
            Self::Zlib(d) => d.finish(),
            Self::Deflate(d) => d.finish(),
            Self::Failed => return Found::Malformed,
        };
        scan.map_or(Found::Malformed, |scan| scan.found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    fn scan(chunks: &[&[u8]]) -> Found {
        let mut scan = Scan::new(None, chunks.first().copied().unwrap_or(b""));
        for c in chunks {
            scan.feed(c);
        }
        scan.finish()
    }

    #[test]
    fn the_top_level_usage_of_a_big_answer_is_read_wherever_it_is_cut() {
        let padding = "x\\\"}{[],".repeat(200_000);
        let doc = format!(
            r#"{{"id":"c","model":"gpt-4o-mini","choices":[{{"message":{{"content":"{padding}","usage":{{"prompt_tokens":1}}}}}}],"usage":{{"prompt_tokens":7,"completion_tokens":9}}, "x": [1, {{"usage": 0}}]}}"#
        );
        let want = Found::Usage(Usage::reported(Some("gpt-4o-mini"), 7, 0, 9));
        assert_eq!(scan(&[doc.as_bytes()]), want);
        let bytes = doc.as_bytes();
        for cut in [1, 7, 1000, bytes.len() / 2, bytes.len() - 3] {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(scan(&[a, b]), want, "cut at {cut}");
        }
        // gzip, fed in small pieces.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        let gz = gz.finish().unwrap();
        let mut scan = Scan::new(Some("gzip"), &gz);
        for piece in gz.chunks(4096) {
            scan.feed(piece);
        }
        assert_eq!(scan.finish(), want);
    }

    #[test]
    fn no_usage_a_cut_document_and_a_huge_usage_are_told_apart() {
        assert_eq!(
            scan(&[br#"{"data":[{"b64_json":"aGk="}]}"#]),
            Found::Nothing
        );
        assert_eq!(
            scan(&[br#"{"usage":{"prompt_tokens":7,"completion"#]),
            Found::Malformed
        );
        assert_eq!(scan(&[b"[1,2]"]), Found::Malformed);
        let huge = format!(r#"{{"usage":{{"x":"{}"}}}}"#, "y".repeat(MAX_VALUE));
        assert_eq!(scan(&[huge.as_bytes()]), Found::Malformed);
        assert_eq!(
            scan(&[br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}} trailing"#]),
            Found::Malformed
        );
        assert_eq!(Scan::new(Some("br"), b"").finish(), Found::Malformed);
        assert_eq!(
            scan(&[br#"{"us\u0061ge":{"prompt_tokens":1,"completion_tokens":2}}"#]),
            Found::Malformed,
            "an escaped key could be `usage`: unreadable, not usage-free"
        );
    }
}
