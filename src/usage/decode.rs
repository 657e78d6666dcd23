//! Inflates a copy of a compressed response body, so that its usage can be
//! read while the client gets the compressed bytes unchanged (OpenAI gzips
//! JSON for clients that accept it).

use std::borrow::Cow;
use std::io::Read;

/// The body's bytes without its `Content-Encoding`, at most `limit` of
/// them; `None` when the encoding is unknown, the data corrupt, or the
/// result over the limit.
/// An unencoded body is the bytes themselves, not a copy.
pub fn decode<'a>(encoding: Option<&str>, bytes: &'a [u8], limit: usize) -> Option<Cow<'a, [u8]>> {
    let encoding = encoding.unwrap_or("identity").trim();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return (bytes.len() <= limit).then_some(Cow::Borrowed(bytes));
    }
    let encoding = encoding.to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        // HTTP's `deflate` is zlib-wrapped; some servers send it raw.
        "deflate" if bytes.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(bytes))
        }
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(bytes)),
        "br" => Box::new(brotli_decompressor::Decompressor::new(bytes, 4096)),
        "zstd" => Box::new(ruzstd::decoding::StreamingDecoder::new(bytes).ok()?),
        _ => return None,
    };
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = br#"{"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;

    #[test]
    fn every_encoding_openai_may_send() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(TEXT).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode(Some("gzip"), &gz, 1 << 20).as_deref(), Some(TEXT));
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(TEXT).unwrap();
        assert_eq!(
            decode(Some("deflate"), &zlib.finish().unwrap(), 1 << 20).as_deref(),
            Some(TEXT)
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(TEXT).unwrap();
        assert_eq!(
            decode(Some("Deflate"), &raw.finish().unwrap(), 1 << 20).as_deref(),
            Some(TEXT)
        );
        let zstd =
            ruzstd::encoding::compress_to_vec(TEXT, ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(decode(Some("zstd"), &zstd, 1 << 20).as_deref(), Some(TEXT));
        assert_eq!(decode(None, TEXT, 1 << 20).as_deref(), Some(TEXT));
    }

    #[test]
    fn brotli() {
        // `{"a":1}` compressed with brotli (quality 11).
        let br: &[u8] = &[
            0x0b, 0x03, 0x80, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x7d, 0x03,
        ];
        assert_eq!(
            decode(Some("br"), br, 100).as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
    }

    #[test]
    fn corrupt_unknown_or_too_big_gives_nothing() {
        assert_eq!(decode(Some("gzip"), b"not gzip", 100), None);
        assert_eq!(decode(Some("compress"), TEXT, 100), None);
        assert_eq!(decode(None, TEXT, 10), None);
    }
}
