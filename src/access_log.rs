//! The completion hook that writes the one access-log line per request.
//!
//! Nothing secret is ever a field: the access line carries the method, the
//! path without its query, the status, timings, byte counts and the token's
//! *name*. It is written in the other lines' format, where they go
//! ([`crate::logging`]).

use std::io::Write;
use std::sync::Arc;

use crate::logging::access_sink;
use crate::record::{Attempt, BoxFuture, Finish, Record};
use crate::usage::prices::Prices;

/// The completion hook that writes one access-log line per request.
///
/// The line is written here rather than as a `tracing` event: the same
/// fields, and the same layout as the other lines (`LOG_FORMAT`), at a
/// fraction of the cost of the event's field visitor (measured in
/// `scripts/bench-notes.md`). `RUST_LOG` still decides whether it is
/// written (an `info` line of this module).
#[derive(Debug, Default, Clone)]
pub struct AccessLog {
    /// What usage costs.
    pub prices: Arc<Prices>,
}

/// One access line's fields, in order; `None` fields are left out. (The
/// serde derive is the reference the hand-written JSON is tested against.)
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    timestamp: Timestamp,
    level: &'static str,
    message: &'static str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_estimated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    status: u16,
    token: &'a str,
    /// The client's address, as the rules judged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<std::net::IpAddr>,
    error_code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    /// The upstream whose answer the client got.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    /// Every attempt, when the pool had more than one upstream to try.
    #[serde(skip)]
    attempts: &'a [Attempt],
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// Now, as the other lines show it: RFC 3339 in UTC, to the microsecond.
struct Timestamp(chrono::DateTime<chrono::Utc>);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = crate::clock::stamp(self.0);
        f.write_str(std::str::from_utf8(&digits).map_err(|_| std::fmt::Error)?)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl AccessLine<'_> {
    /// The line as JSON, as serde_json writes the struct, key by key; only
    /// the values that may need escaping go through serde_json (serde
    /// escapes every key, and the keys are a fifth of a line's cost).
    fn json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        fn key(out: &mut Vec<u8>, key: &str) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn value(
            out: &mut Vec<u8>,
            name: &str,
            v: &impl serde::Serialize,
        ) -> serde_json::Result<()> {
            key(out, name);
            serde_json::to_writer(&mut *out, v)
        }
        fn given(
            out: &mut Vec<u8>,
            name: &str,
            v: Option<impl serde::Serialize>,
        ) -> serde_json::Result<()> {
            v.map_or(Ok(()), |v| value(out, name, &v))
        }
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(&crate::clock::stamp(self.timestamp.0));
        out.push(b'"');
        value(out, "level", &self.level)?;
        value(out, "message", &self.message)?;
        value(out, "method", &self.method)?;
        value(out, "path", &self.path)?;
        given(out, "model", self.model)?;
        given(out, "input_tokens", self.input_tokens)?;
        given(out, "cached_tokens", self.cached_tokens)?;
        given(out, "output_tokens", self.output_tokens)?;
        given(out, "usage_estimated", self.usage_estimated)?;
        given(out, "cost_usd", self.cost_usd)?;
        value(out, "status", &self.status)?;
        value(out, "token", &self.token)?;
        given(out, "client_ip", self.client_ip)?;
        value(out, "error_code", &self.error_code)?;
        given(out, "upstream_ms", self.upstream_ms)?;
        given(out, "upstream", self.upstream)?;
        if !self.attempts.is_empty() {
            key(out, "attempts");
            out.push(b'[');
            for (i, attempt) in self.attempts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"upstream\":");
                serde_json::to_writer(&mut *out, &*attempt.upstream)?;
                match attempt.result {
                    Ok(status) => value(out, "status", &status)?,
                    Err(code) => value(out, "error", &code)?,
                }
                value(out, "ms", &round_ms(attempt.ms))?;
                out.push(b'}');
            }
            out.push(b']');
        }
        value(out, "duration_ms", &self.duration_ms)?;
        value(out, "bytes_in", &self.bytes_in)?;
        value(out, "bytes_out", &self.bytes_out)?;
        value(out, "outcome", &self.outcome)?;
        given(out, "request_id", self.request_id)?;
        out.push(b'}');
        Ok(())
    }

    /// The line as the text format writes it: `name=value` pairs, strings
    /// quoted and escaped as `tracing` does (`Debug`). The path is quoted
    /// too, so that a path holding `status=200` or quotes cannot pass for
    /// other fields (JSON escapes it already).
    fn text(&self, ansi: bool, out: &mut Vec<u8>) {
        // Formatted straight into `out`: a `Vec` takes every write.
        let (dim, level, italic, reset) = if ansi {
            ("\x1b[2m", "\x1b[32m", "\x1b[3m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let _ = write!(
            out,
            "{dim}{}{reset} {level} INFO{reset} {}",
            self.timestamp, self.message
        );
        let mut field = |name: &str, value: &dyn std::fmt::Display| {
            let _ = write!(out, " {italic}{name}{reset}{dim}={reset}{value}");
        };
        field("method", &self.method);
        field("path", &format_args!("{:?}", self.path));
        if let Some(model) = self.model {
            field("model", &format_args!("{model:?}"));
        }
        let numbers = [
            ("input_tokens", self.input_tokens),
            ("cached_tokens", self.cached_tokens),
            ("output_tokens", self.output_tokens),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                field(name, &value);
            }
        }
        if let Some(estimated) = self.usage_estimated {
            field("usage_estimated", &estimated);
        }
        if let Some(cost) = self.cost_usd {
            field("cost_usd", &format_args!("{cost:?}"));
        }
        field("status", &self.status);
        field("token", &format_args!("{:?}", self.token));
        if let Some(ip) = self.client_ip {
            field("client_ip", &ip);
        }
        field("error_code", &format_args!("{:?}", self.error_code));
        if let Some(ms) = self.upstream_ms {
            field("upstream_ms", &format_args!("{ms:?}"));
        }
        if let Some(upstream) = self.upstream {
            field("upstream", &format_args!("{upstream:?}"));
        }
        if !self.attempts.is_empty() {
            let mut list = String::new();
            for attempt in self.attempts {
                if !list.is_empty() {
                    list.push_str(", ");
                }
                let _ = match attempt.result {
                    Ok(status) => std::fmt::Write::write_fmt(
                        &mut list,
                        format_args!("{} {status} {:?}ms", attempt.upstream, round_ms(attempt.ms)),
                    ),
                    Err(code) => std::fmt::Write::write_fmt(
                        &mut list,
                        format_args!("{} {code} {:?}ms", attempt.upstream, round_ms(attempt.ms)),
                    ),
                };
            }
            field("attempts", &format_args!("{list:?}"));
        }
        field("duration_ms", &format_args!("{:?}", self.duration_ms));
        field("bytes_in", &self.bytes_in);
        field("bytes_out", &self.bytes_out);
        field("outcome", &format_args!("{:?}", self.outcome));
        if let Some(id) = self.request_id {
            field("request_id", &format_args!("{id:?}"));
        }
        out.push(b'\n');
    }
}

/// Milliseconds to the microsecond.
fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

impl Finish for AccessLog {
    fn finish(&self, record: &Record) -> Option<BoxFuture<()>> {
        let sink = access_sink()?;
        if !tracing::enabled!(tracing::Level::INFO) {
            return None;
        }
        let round = round_ms;
        let charge = record.charge(&self.prices);
        let usage = &charge.usage;
        let line = AccessLine {
            timestamp: Timestamp(chrono::Utc::now()),
            level: "INFO",
            message: "request",
            method: record.method.as_str(),
            path: &record.path,
            model: charge.model.as_deref(),
            input_tokens: usage.as_ref().map(|u| u.input),
            cached_tokens: usage.as_ref().map(|u| u.cached_input),
            output_tokens: usage.as_ref().map(|u| u.output),
            usage_estimated: usage.as_ref().map(|u| u.estimated),
            cost_usd: charge.usd,
            status: record.status,
            token: record.token.as_deref().unwrap_or("-"),
            client_ip: record.client_ip,
            error_code: record.code.unwrap_or("-"),
            upstream_ms: record.upstream_ms.map(round),
            upstream: record.upstream.as_deref(),
            attempts: &record.attempts,
            duration_ms: round(record.elapsed_ms()),
            bytes_in: record.bytes_in.get(),
            bytes_out: record.bytes_out,
            outcome: record.outcome.as_str(),
            request_id: record.request_id.as_deref(),
        };
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|out| {
            out.clear();
            if sink.json {
                if line.json(out).is_err() {
                    return;
                }
                out.push(b'\n');
            } else {
                line.text(sink.ansi, out);
            }
            sink.write(out);
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_chronos_format_wrote_them() {
        for (secs, nanos) in [
            (0, 0),
            (1_764_620_000, 123_456_789),
            (951_782_400, 1_000),
            (253_402_300_799, 999_999_999),
        ] {
            let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            assert_eq!(
                Timestamp(t).to_string(),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
        // A leap second keeps to six digits.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        assert_eq!(Timestamp(leap).to_string(), "2016-12-31T23:59:59.999999Z");
    }

    fn line<'a>(path: &'a str, model: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            timestamp: Timestamp(
                chrono::DateTime::from_timestamp(1_764_620_000, 123_456_000).unwrap(),
            ),
            level: "INFO",
            message: "request",
            method: "POST",
            path,
            model,
            input_tokens: model.map(|_| 12),
            cached_tokens: model.map(|_| 0),
            output_tokens: model.map(|_| 5),
            usage_estimated: model.map(|_| false),
            cost_usd: model.map(|_| 0.000_105),
            status: 200,
            token: "bob \"x\"",
            client_ip: None,
            error_code: "-",
            upstream_ms: None,
            upstream: None,
            attempts: &[],
            duration_ms: 1.5,
            bytes_in: 10,
            bytes_out: 20,
            outcome: "complete",
            request_id: None,
        }
    }

    #[test]
    fn text_access_lines_quote_what_could_forge_a_field_and_leave_out_what_is_unknown() {
        let mut out = Vec::new();
        line("/v1/x\"status=999\"token=h2", None).text(false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2025-12-01T20:13:20.123456Z  INFO request method=POST path=\"/v1/x\\\"status=999\\\"token=h2\" \
             status=200 token=\"bob \\\"x\\\"\" error_code=\"-\" duration_ms=1.5 bytes_in=10 bytes_out=20 \
             outcome=\"complete\"\n"
        );
        let mut colored = Vec::new();
        line("/v1/models", None).text(true, &mut colored);
        let colored = String::from_utf8(colored).unwrap();
        assert!(colored.contains("\x1b[32m INFO\x1b[0m"), "{colored}");
        assert!(
            colored.contains("\x1b[3mstatus\x1b[0m\x1b[2m=\x1b[0m200"),
            "{colored}"
        );
    }

    #[test]
    fn json_access_lines_are_what_serde_writes() {
        let mut hostile = line("/v1/x\"}\n\u{7}é", Some("m\"\\"));
        hostile.request_id = Some("id\t1");
        hostile.upstream_ms = Some(f64::NAN);
        hostile.client_ip = Some("2001:db8::7".parse().unwrap());
        for l in [
            line("/v1/chat/completions", Some("gpt-4o-mini")),
            line("/v1/models", None),
            hostile,
        ] {
            let mut out = Vec::new();
            l.json(&mut out).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&l).unwrap()
            );
        }
    }

    #[test]
    fn json_access_lines_carry_the_usage_when_there_is_one() {
        let with = serde_json::to_value(line("/v1/chat/completions", Some("gpt-4o-mini"))).unwrap();
        assert_eq!(with["timestamp"], "2025-12-01T20:13:20.123456Z");
        assert_eq!(with["model"], "gpt-4o-mini");
        assert_eq!(with["input_tokens"], 12);
        assert_eq!(with["cost_usd"], 0.000_105);
        assert_eq!(with["token"], "bob \"x\"");
        let without = serde_json::to_value(line("/v1/models", None)).unwrap();
        for absent in [
            "model",
            "input_tokens",
            "cost_usd",
            "upstream_ms",
            "request_id",
        ] {
            assert!(without.get(absent).is_none(), "{absent} in {without}");
        }
        assert_eq!(without["status"], 200);
    }
}
