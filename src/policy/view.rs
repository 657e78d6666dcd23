//! The request as the rules read it: its body parsed once, into a typed
//! [`View`] of the fields the rules need, which every policy shares.
//!
//! - A JSON body is read by serde into [`Wire`]: the few fields the rules
//!   need, each captured by the *kind* of JSON value it holds
//!   ([`crate::json::Scalar`]), and everything else skipped (`IgnoredAny`), so an 8 MiB
//!   image or a long history never becomes a `Value` tree. Each field is
//!   then checked the way OpenAI checks it; a wrong one is a `400` that
//!   names its `param`.
//! - A known field given twice (`{"model": "a", "model": "b"}`) is refused:
//!   which one the upstream would read is not ours to guess (Python's
//!   `json` keeps the last, other parsers the first).
//! - A `multipart/form-data` body is read by `multer`, exactly as a form
//!   parser reads it; its `model` field must be there once, and a part
//!   whose headers cannot be read unambiguously refuses the form.
//!
//! Nothing here re-serialises: a rule that changes the body (usage for a
//! stream) does so itself, and only then.

use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::GatewayError;
use crate::headers;
use crate::json::{Key, Scalar};
pub use crate::openai::{check_model, MAX_MODEL_NAME};

/// The largest `max_tokens` (and kin) accepted: OpenAI's schema takes a
/// 32-bit integer; a reservation is capped far lower, at the model's ceiling.
pub const MAX_OUTPUT_PARAM: u64 = i32::MAX as u64;

/// The most completions `n` may ask for (OpenAI's own bound).
pub const MAX_N: u64 = 128;

/// The most `best_of` may ask for (OpenAI's legacy completions' bound).
pub const MAX_BEST_OF: u64 = 20;

/// What the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Media {
    /// No body.
    #[default]
    Empty,
    /// A JSON body (`application/json` or `+json`).
    Json,
    /// A `multipart/form-data` body.
    Multipart,
    /// Anything else (or no `Content-Type` with a body).
    Other,
}

/// What the client said about `stream_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamOptions {
    /// Not there.
    #[default]
    Absent,
    /// `null`: the same as absent to the upstream, but the key is there.
    Null,
    /// An object, with what it says of `include_usage`.
    Object {
        /// `include_usage: true`.
        include_usage: bool,
    },
}

/// The fields of a request body that the rules read, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// What the body is.
    pub media: Media,
    /// Its length in bytes.
    pub bytes: u64,
    /// The `model` it names (a JSON string, or a form field).
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options`.
    pub stream_options: StreamOptions,
    /// The largest of `max_completion_tokens`, `max_tokens` and
    /// `max_output_tokens` it sets (when unsure, the larger).
    pub max_output: Option<u64>,
    /// How many answers it asks for: the larger of `n` and `best_of` (at
    /// least 1), times the prompts of a legacy completion's `prompt` list.
    pub copies: u64,
    /// `background: true` (a Responses run read later).
    pub background: bool,
    /// Characters of `input` when it is a string (speech is billed by them).
    pub input_chars: u64,
    /// An image's `size`.
    pub size: Option<String>,
    /// An image's `quality`.
    pub quality: Option<String>,
}

impl View {
    /// Reads `body`, sent with `headers`.
    pub async fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Self, GatewayError> {
        let mut view = if body.is_empty() {
            View::default()
        } else if headers::is_json(headers) {
            json(body)?
        } else if headers::is_media(headers, "multipart/form-data") {
            multipart(headers::content_type(headers), body.clone()).await?
        } else {
            View {
                media: Media::Other,
                ..View::default()
            }
        };
        view.bytes = body.len() as u64;
        view.copies = view.copies.max(1);
        Ok(view)
    }
}

/// `stream_options` as sent: absent or null, an object (what it says of
/// `include_usage`), or something else.
#[derive(Debug, Default, Clone, PartialEq)]
enum OptionsWire {
    #[default]
    Absent,
    Null,
    Object(Scalar),
    Other,
}

impl<'de> Deserialize<'de> for OptionsWire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OptionsWire;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Null)
            }
            fn visit_none<E>(self) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<OptionsWire, E> {
                Ok(OptionsWire::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OptionsWire, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(OptionsWire::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionsWire, A::Error> {
                let mut include = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if &*key == "include_usage" {
                        if include.is_some() {
                            return Err(de::Error::duplicate_field("include_usage"));
                        }
                        include = Some(map.next_value::<Scalar>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OptionsWire::Object(include.unwrap_or_default()))
            }
        }
        d.deserialize_any(V)
    }
}

/// How many prompts a legacy completion's `prompt` holds: each is answered
/// (`n` times), so a list of a thousand prompts is a thousand answers. A
/// string, or a list of token ids, is one; a list of strings or of token
/// lists is its length.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Prompts(u64);

impl<'de> Deserialize<'de> for Prompts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Prompts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompts, A::Error> {
                let mut count = 0u64;
                let mut ids = false;
                while let Some(item) = seq.next_element::<Scalar>()? {
                    ids |= matches!(item, Scalar::Unsigned(_) | Scalar::Negative);
                    count = count.saturating_add(1);
                }
                Ok(Prompts(if ids { 1 } else { count.max(1) }))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Prompts, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Prompts(1))
            }
            fn visit_str<E>(self, _: &str) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_unit<E>(self) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Prompts, E> {
                Ok(Prompts(1))
            }
        }
        d.deserialize_any(V)
    }
}

/// The length in characters of a string `input`; 0 for any other kind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct InputChars(u64);

impl<'de> Deserialize<'de> for InputChars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputChars;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<InputChars, E> {
                Ok(InputChars(v.chars().count() as u64))
            }
            fn visit_unit<E>(self) -> Result<InputChars, E> {
                Ok(InputChars(0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<InputChars, E> {
                Ok(InputChars(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<InputChars, E> {
                Ok(InputChars(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<InputChars, E> {
                Ok(InputChars(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<InputChars, E> {
                Ok(InputChars(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputChars, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(InputChars(0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InputChars, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(InputChars(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// The body's fields as sent. serde's derive refuses a known field given
/// twice; unknown fields are skipped without being built.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Wire {
    model: Scalar,
    stream: Scalar,
    stream_options: OptionsWire,
    max_tokens: Scalar,
    max_completion_tokens: Scalar,
    max_output_tokens: Scalar,
    n: Scalar,
    best_of: Scalar,
    background: Scalar,
    input: InputChars,
    prompt: Prompts,
    size: Scalar,
    quality: Scalar,
}

fn json(body: &[u8]) -> Result<View, GatewayError> {
    let wire: Wire = serde_json::from_slice(body).map_err(|_| {
        GatewayError::InvalidRequestBody(
            "the body is not a JSON object the gateway can read unambiguously (not JSON, not an object, or a field given twice)",
        )
    })?;
    let model = match wire.model {
        Scalar::Absent | Scalar::Null => None,
        Scalar::Text(model) => {
            check_model(&model)?;
            Some(model)
        }
        _ => {
            return Err(GatewayError::invalid_param(
                "model",
                "`model` must be a string",
            ))
        }
    };
    let mut max_output = None;
    for (param, value) in [
        ("max_completion_tokens", &wire.max_completion_tokens),
        ("max_tokens", &wire.max_tokens),
        ("max_output_tokens", &wire.max_output_tokens),
    ] {
        if let Some(v) = count(param, value, 0, MAX_OUTPUT_PARAM)? {
            max_output = Some(max_output.map_or(v, |m: u64| m.max(v)));
        }
    }
    let n = count("n", &wire.n, 1, MAX_N)?.unwrap_or(1);
    let best_of = count("best_of", &wire.best_of, 1, MAX_BEST_OF)?.unwrap_or(1);
    let stream_options = match wire.stream_options {
        OptionsWire::Absent => StreamOptions::Absent,
        OptionsWire::Null => StreamOptions::Null,
        OptionsWire::Object(include) => StreamOptions::Object {
            include_usage: flag("stream_options.include_usage", &include)?,
        },
        OptionsWire::Other => {
            return Err(GatewayError::invalid_param(
                "stream_options",
                "`stream_options` must be an object or null",
            ))
        }
    };
    let text = |value: Scalar| match value {
        Scalar::Text(text) => Some(text),
        _ => None,
    };
    Ok(View {
        media: Media::Json,
        model,
        stream: flag("stream", &wire.stream)?,
        stream_options,
        max_output,
        copies: n.max(best_of).saturating_mul(wire.prompt.0.max(1)),
        background: flag("background", &wire.background)?,
        input_chars: wire.input.0,
        size: text(wire.size),
        quality: text(wire.quality),
        ..View::default()
    })
}

/// A boolean field: `true`, `false`, absent or null (false).
fn flag(param: &'static str, value: &Scalar) -> Result<bool, GatewayError> {
    match value {
        Scalar::Absent | Scalar::Null => Ok(false),
        Scalar::Bool(v) => Ok(*v),
        _ => Err(GatewayError::invalid_param(
            param,
            format!("`{param}` must be a boolean"),
        )),
    }
}

/// A count field: a whole number from `min` to `max`, absent or null.
fn count(
    param: &'static str,
    value: &Scalar,
    min: u64,
    max: u64,
) -> Result<Option<u64>, GatewayError> {
    match value {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Unsigned(v) if (min..=max).contains(v) => Ok(Some(*v)),
        _ => Err(GatewayError::invalid_param(
            param,
            format!("`{param}` must be an integer from {min} to {max}"),
        )),
    }
}

/// The most of one form field's value kept (a model name, a size).
const MAX_FORM_TEXT: usize = 4096;

async fn multipart(content_type: &str, body: Bytes) -> Result<View, GatewayError> {
    let bad = |why: &'static str| GatewayError::InvalidRequestBody(why);
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| bad("a multipart body needs one readable `boundary` in its Content-Type"))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut view = View {
        media: Media::Multipart,
        ..View::default()
    };
    let mut seen_model = false;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|_| bad("the multipart body cannot be read unambiguously"))?;
        let Some(mut field) = field else { break };
        let disposition = Disposition::parse(field.headers()).ok_or(bad(
            "a multipart part has a Content-Disposition the gateway cannot read unambiguously",
        ))?;
        if field.name() != Some(disposition.name.as_str()) {
            return Err(bad("a multipart part's name is ambiguous"));
        }
        let wanted = disposition.filename.is_none()
            && matches!(
                disposition.name.as_str(),
                "model" | "size" | "quality" | "n"
            );
        let mut value = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|_| bad("the multipart body cannot be read unambiguously"))?
        {
            if wanted && value.len() + chunk.len() <= MAX_FORM_TEXT {
                value.extend_from_slice(&chunk);
            } else if wanted {
                return Err(bad("a multipart form field is too long"));
            }
        }
        if !wanted {
            continue;
        }
        let text = String::from_utf8(value).map_err(|_| bad("a form field is not UTF-8"))?;
        let text = text.trim().to_owned();
        match disposition.name.as_str() {
            "model" => {
                if seen_model {
                    return Err(GatewayError::invalid_param(
                        "model",
                        "the form gives `model` more than once",
                    ));
                }
                seen_model = true;
                check_model(&text)?;
                view.model = Some(text);
            }
            "n" => {
                let n = text.parse::<u64>().ok().filter(|n| (1..=MAX_N).contains(n));
                view.copies = n.ok_or_else(|| {
                    GatewayError::invalid_param(
                        "n",
                        format!("`n` must be an integer from 1 to {MAX_N}"),
                    )
                })?;
            }
            "size" => view.size = Some(text),
            _ => view.quality = Some(text),
        }
    }
    Ok(view)
}

/// A part's `Content-Disposition: form-data; name="…"[; filename="…"]`,
/// read strictly: parameters separated by `;`, each `key=value` or
/// `key="quoted"`, no key twice, a `name`. Anything else is ambiguous.
struct Disposition {
    name: String,
    filename: Option<String>,
}

impl Disposition {
    fn parse(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(http::header::CONTENT_DISPOSITION).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let text = value.to_str().ok()?;
        let (kind, mut rest) = text.split_once(';')?;
        if !kind.trim().eq_ignore_ascii_case("form-data") {
            return None;
        }
        let (mut name, mut filename) = (None, None);
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => value.push(chars.next()?.1),
                        (at, '"') => break at + 1,
                        (_, c) => value.push(c),
                    }
                };
                (value, &quoted[end..])
            } else {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            let slot = match key.as_str() {
                "name" => Some(&mut name),
                "filename" => Some(&mut filename),
                // RFC 6266's extended form of the name would be a second
                // name: refused. (`filename*`, which some clients send for
                // a non-ASCII file name, names no field.)
                "name*" => return None,
                _ => None,
            };
            if let Some(slot) = slot {
                if slot.replace(value).is_some() {
                    return None;
                }
            }
            let next = next.trim_start();
            if next.is_empty() {
                break;
            }
            rest = next.strip_prefix(';')?;
        }
        Some(Self {
            name: name?,
            filename,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h
    }

    async fn view(body: &str) -> Result<View, GatewayError> {
        View::parse(&json_headers(), &Bytes::from(body.to_owned())).await
    }

    fn param(error: GatewayError) -> Option<String> {
        error.param().map(str::to_owned)
    }

    #[tokio::test]
    async fn an_honest_chat_reads_as_it_was_written() {
        let v = view(r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"n":2,"messages":[{"role":"user","content":"hi"}]}"#).await.unwrap();
        assert_eq!(v.model.as_deref(), Some("gpt-4o-mini"));
        assert!(v.stream);
        assert_eq!(
            v.stream_options,
            StreamOptions::Object {
                include_usage: true
            }
        );
        assert_eq!(
            (v.max_output, v.copies, v.media),
            (Some(50), 2, Media::Json)
        );
        let v = view(r#"{"model":"m","stream_options":null,"max_tokens":null}"#)
            .await
            .unwrap();
        assert_eq!(v.stream_options, StreamOptions::Null);
        assert_eq!((v.max_output, v.copies), (None, 1));
        let v = view(r#"{"max_tokens":10,"max_completion_tokens":900}"#)
            .await
            .unwrap();
        assert_eq!(v.max_output, Some(900), "when both are set, the larger");
        let v = view(r#"{"model":"tts-1","input":"héllo"}"#).await.unwrap();
        assert_eq!(v.input_chars, 5);
        // A legacy completion answers each prompt of a list, n times.
        let v = view(r#"{"prompt":["a","b","c"],"n":2}"#).await.unwrap();
        assert_eq!(v.copies, 6);
        let v = view(r#"{"prompt":[1,2,3]}"#).await.unwrap();
        assert_eq!(v.copies, 1, "token ids are one prompt");
        let v = view(r#"{"prompt":[[1,2],[3]],"best_of":3}"#).await.unwrap();
        assert_eq!(v.copies, 6);
    }

    #[tokio::test]
    async fn a_count_that_is_not_one_is_a_400_naming_its_param() {
        for (body, want) in [
            (
                r#"{"max_completion_tokens":16000000000000000000}"#,
                "max_completion_tokens",
            ),
            (r#"{"max_tokens":1e300}"#, "max_tokens"),
            (r#"{"max_tokens":-1}"#, "max_tokens"),
            (r#"{"max_output_tokens":1.5}"#, "max_output_tokens"),
            (r#"{"max_tokens":"12"}"#, "max_tokens"),
            (r#"{"max_tokens":true}"#, "max_tokens"),
            (r#"{"n":0}"#, "n"),
            (r#"{"n":129}"#, "n"),
            (r#"{"best_of":1e3}"#, "best_of"),
            (r#"{"model":7}"#, "model"),
            (r#"{"stream":"yes"}"#, "stream"),
            (r#"{"stream_options":[1]}"#, "stream_options"),
            (
                r#"{"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"background":1}"#, "background"),
        ] {
            let error = view(body).await.unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert_eq!(error.kind(), "invalid_request_error", "{body}");
            assert_eq!(param(error).as_deref(), Some(want), "{body}");
        }
    }

    #[tokio::test]
    async fn repeated_fields_and_bad_model_names_are_refused() {
        for body in [
            r#"{"model":"gpt-4o-mini","model":"o1-pro"}"#,
            r#"{"stream_options":{"include_usage":false,"include_usage":true}}"#,
            r#"[1,2]"#,
            r#"{"model":"a""#,
        ] {
            let error = view(body).await.unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_NAME + 1));
        assert_eq!(
            param(view(&long).await.unwrap_err()).as_deref(),
            Some("model")
        );
        let control = r#"{"model":"gpt-4o\u001b[31m"}"#;
        assert_eq!(
            param(view(control).await.unwrap_err()).as_deref(),
            Some("model")
        );
    }

    fn form(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", content_type.parse().unwrap());
        h
    }

    async fn form_view(content_type: &str, body: &str) -> Result<View, GatewayError> {
        View::parse(&form(content_type), &Bytes::from(body.to_owned())).await
    }

    #[tokio::test]
    async fn a_form_is_read_as_a_form_parser_reads_it() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nname=\"model\"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        let v = form_view("multipart/form-data; boundary=XyZ", body)
            .await
            .unwrap();
        assert_eq!(v.model.as_deref(), Some("whisper-1"));
        assert_eq!(v.media, Media::Multipart);
        // A non-ASCII file name in RFC 6266's extended form names no field.
        let extended = body.replace("filename=\"a.wav\"", "filename*=UTF-8''%C3%A9.wav");
        let v = form_view("multipart/form-data; boundary=XyZ", &extended)
            .await
            .unwrap();
        assert_eq!(v.model.as_deref(), Some("whisper-1"));
        let quoted = body.replace("XyZ", "X;Y");
        let v = form_view("multipart/form-data; boundary=\"X;Y\"", &quoted)
            .await
            .unwrap();
        assert_eq!(v.model.as_deref(), Some("whisper-1"));
    }

    #[tokio::test]
    async fn an_ambiguous_form_is_refused() {
        let ct = "multipart/form-data; boundary=B";
        let part = |head: &str, value: &str| format!("--B\r\n{head}\r\n\r\n{value}\r\n");
        let model = |m: &str| part("Content-Disposition: form-data; name=\"model\"", m);
        for (why, body) in [
            ("two models", format!("{}{}--B--\r\n", model("gpt-4o-mini"), model("o1-pro"))),
            (
                "a decoy name",
                format!(
                    "{}{}--B--\r\n",
                    part("Content-Disposition: form-data; xname=\"model\"; name=\"prompt\"; name=\"model\"", "o1-pro"),
                    model("gpt-4o-mini")
                ),
            ),
            (
                "a name inside a filename",
                format!(
                    "{}--B--\r\n",
                    part("Content-Disposition: form-data; filename=\"a; name=model\"", "o1-pro")
                ),
            ),
            (
                "an extended name",
                format!("{}--B--\r\n", part("Content-Disposition: form-data; name=\"prompt\"; name*=UTF-8''model", "o1-pro")),
            ),
            ("cut mid-part", "--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\no1-pro".to_owned()),
            ("no CRLF after the headers", "--B\r\nContent-Disposition: form-data; name=\"model\"\r\no1-pro\r\n--B--\r\n".to_owned()),
            ("another boundary", format!("{}--B--\r\n", model("o1")).replace("--B", "--C")),
        ] {
            let error = form_view(ct, &body).await.unwrap_err();
            assert_eq!(error.status(), 400, "{why}");
        }
    }
}
