//! An incremental scanner for `text/event-stream`: events may be split
//! anywhere across chunks; memory stays bounded whatever the stream's length.

/// The most data one event may hold before the scanner gives up on it.
const MAX_EVENT: usize = 1 << 20;

/// Splits a stream into events as bytes arrive.
#[derive(Debug, Default)]
pub struct Scanner {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    overflow: bool,
}

impl Scanner {
    /// Feeds a chunk; `on_event` gets the `data` of each event that completes
    /// (its `data:` lines joined with `\n`), or `None` for one too long to keep.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Option<&[u8]>)) {
        let mut rest = chunk;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            self.push_line(&rest[..at]);
            let line = std::mem::take(&mut self.line);
            self.line_done(line.strip_suffix(b"\r").unwrap_or(&line), &mut on_event);
            rest = &rest[at + 1..];
        }
        self.push_line(rest);
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() <= MAX_EVENT {
            self.line.extend_from_slice(bytes);
        } else {
            self.overflow = true;
        }
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Option<&[u8]>)) {
        if line.is_empty() {
            if self.overflow {
                on_event(None);
            } else if self.has_data {
                on_event(Some(&self.data));
            }
            self.data.clear();
            self.has_data = false;
            self.overflow = false;
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() <= MAX_EVENT {
                self.data.extend_from_slice(value);
            } else {
                self.overflow = true;
            }
            self.has_data = true;
        }
        // `event:`, `id:`, `retry:` and comments carry no usage.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(chunks: &[&[u8]]) -> Vec<Option<String>> {
        let mut scanner = Scanner::default();
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.feed(chunk, |e| {
                out.push(e.map(|d| String::from_utf8_lossy(d).into_owned()))
            });
        }
        out
    }

    #[test]
    fn events_and_their_data() {
        let stream: &[u8] = b"event: response.created\ndata: {\"a\":1}\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        assert_eq!(
            events(&[stream]),
            [
                Some("{\"a\":1}".into()),
                Some("x\ny".into()),
                Some("[DONE]".into())
            ]
        );
        // An event held back until it completes.
        assert_eq!(
            events(&[b"data: {\"a\":", b"1}\n"]),
            Vec::<Option<String>>::new()
        );
    }

    proptest! {
        /// However a stream is cut into chunks, the events are the same.
        #[test]
        fn split_anywhere(cuts in prop::collection::vec(0usize..200, 0..12)) {
            let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\r\n\r\ndata: [DONE]\n\n";
            let whole = events(&[stream]);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&stream[at..p]);
                at = p;
            }
            chunks.push(&stream[at..]);
            prop_assert_eq!(events(&chunks), whole);
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut scanner = Scanner::default();
        let big = vec![b'x'; 64 * 1024];
        let mut seen = Vec::new();
        scanner.feed(b"data: ", |_| {});
        for _ in 0..40 {
            scanner.feed(&big, |e| seen.push(e.is_some()));
        }
        scanner.feed(b"\n\ndata: ok\n\n", |e| seen.push(e.is_some()));
        assert_eq!(
            seen,
            [false, true],
            "the oversized event is reported as lost, the next one read"
        );
        assert!(
            scanner.line.capacity() <= 2 * MAX_EVENT && scanner.data.capacity() <= 2 * MAX_EVENT
        );
    }
}
