//! The SQLite store's settlement journal: what makes a limited request's
//! usage durable before its response ends, without a SQLite commit on the
//! request's path.
//!
//! A settlement that must be durable is appended to the journal, one line
//! (one `write(2)`) numbered by the store's sequence, then counted in
//! memory; the writer thread commits it to the file behind, as it does the
//! rest. Each commit records, in the same transaction, the epoch and the last
//! sequence it holds (`journal` table), so a line is *in the file* exactly
//! when its epoch is the file's and its sequence is at most the file's.
//!
//! Segments: appends go to the newest segment (`PATH.journal-N`). When the
//! writer takes a batch, a new segment starts; once the batch is committed,
//! the segments before it go. So the journal holds at most what the
//! commits in flight hold, whatever the load.
//!
//! At start, the lines of the file's epoch past its sequence are settled
//! again (what a process that died had journaled and not committed),
//! committed with the next epoch, and the segments removed. A torn last
//! line (the process died inside the write) is skipped: that request's
//! response had not ended. The durability is the WAL's with
//! `synchronous=NORMAL`: a crash of the process loses nothing; a power cut
//! may lose the last writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::store::{Reservation, Settlement};
use super::Amount;

/// One journal line, as it is read back.
#[derive(Deserialize)]
struct Line {
    e: u64,
    s: u64,
    token: String,
    at_us: i64,
    reservation: Option<Held>,
    used: bool,
    model: String,
    upstream: String,
    input: i64,
    cached: i64,
    output: i64,
    usd_micros: i64,
    estimated: bool,
    windows: Vec<String>,
    row: bool,
}

#[derive(Deserialize)]
struct Held {
    id: String,
    windows: Vec<String>,
    requests: i64,
    tokens: i64,
    usd_micros: i64,
}

/// Writes `s` as the journal line `seq` of `epoch` ([`Line`]'s fields, in
/// its order), by hand: serde's derive escapes every field name on every
/// line, and this runs on every limited request. The derive's output is
/// the tests' oracle ([`LineOut`]), byte for byte.
fn write_line(line: &mut Vec<u8>, epoch: u64, seq: u64, s: &Settlement) -> serde_json::Result<()> {
    fn int(line: &mut Vec<u8>, n: impl itoa::Integer) {
        line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    fn strs(line: &mut Vec<u8>, all: &[String]) -> serde_json::Result<()> {
        line.push(b'[');
        for (i, one) in all.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            serde_json::to_writer(&mut *line, one)?;
        }
        line.push(b']');
        Ok(())
    }
    fn flag(line: &mut Vec<u8>, b: bool) {
        line.extend_from_slice(if b { b"true" } else { b"false" });
    }
    line.extend_from_slice(br#"{"e":"#);
    int(line, epoch);
    line.extend_from_slice(br#","s":"#);
    int(line, seq);
    line.extend_from_slice(br#","token":"#);
    serde_json::to_writer(&mut *line, &*s.token)?;
    line.extend_from_slice(br#","at_us":"#);
    int(line, s.at.timestamp_micros());
    line.extend_from_slice(br#","reservation":"#);
    match &s.reservation {
        None => line.extend_from_slice(b"null"),
        Some(r) => {
            line.extend_from_slice(br#"{"id":"#);
            serde_json::to_writer(&mut *line, &r.id)?;
            line.extend_from_slice(br#","windows":"#);
            strs(line, &r.windows)?;
            line.extend_from_slice(br#","requests":"#);
            int(line, r.amount.requests);
            line.extend_from_slice(br#","tokens":"#);
            int(line, r.amount.tokens);
            line.extend_from_slice(br#","usd_micros":"#);
            int(line, r.amount.usd_micros);
            line.push(b'}');
        }
    }
    line.extend_from_slice(br#","used":"#);
    flag(line, s.used);
    line.extend_from_slice(br#","model":"#);
    serde_json::to_writer(&mut *line, &*s.model)?;
    line.extend_from_slice(br#","upstream":"#);
    serde_json::to_writer(&mut *line, &*s.upstream)?;
    for (name, n) in [
        (&br#","input":"#[..], s.input),
        (br#","cached":"#, s.cached),
        (br#","output":"#, s.output),
        (br#","usd_micros":"#, s.usd_micros),
    ] {
        line.extend_from_slice(name);
        int(line, n);
    }
    line.extend_from_slice(br#","estimated":"#);
    flag(line, s.estimated);
    line.extend_from_slice(br#","windows":"#);
    strs(line, &s.windows)?;
    line.extend_from_slice(br#","row":"#);
    flag(line, s.row);
    line.push(b'}');
    Ok(())
}

/// One journal line as serde's derive writes it: [`write_line`]'s oracle.
#[cfg(test)]
#[derive(Serialize)]
struct LineOut<'a> {
    e: u64,
    s: u64,
    token: &'a str,
    at_us: i64,
    reservation: Option<HeldOut<'a>>,
    used: bool,
    model: &'a str,
    upstream: &'a str,
    input: i64,
    cached: i64,
    output: i64,
    usd_micros: i64,
    estimated: bool,
    windows: &'a [String],
    row: bool,
}

#[cfg(test)]
#[derive(Serialize)]
struct HeldOut<'a> {
    id: &'a str,
    windows: &'a [String],
    requests: i64,
    tokens: i64,
    usd_micros: i64,
}

#[cfg(test)]
impl<'a> LineOut<'a> {
    fn of(epoch: u64, seq: u64, s: &'a Settlement) -> Self {
        Self {
            e: epoch,
            s: seq,
            token: &s.token,
            at_us: s.at.timestamp_micros(),
            reservation: s.reservation.as_ref().map(|r| HeldOut {
                id: &r.id,
                windows: &r.windows,
                requests: r.amount.requests,
                tokens: r.amount.tokens,
                usd_micros: r.amount.usd_micros,
            }),
            used: s.used,
            model: &s.model,
            upstream: &s.upstream,
            input: s.input,
            cached: s.cached,
            output: s.output,
            usd_micros: s.usd_micros,
            estimated: s.estimated,
            windows: &s.windows,
            row: s.row,
        }
    }
}

impl Line {
    fn settlement(self) -> Option<Settlement> {
        let token: Arc<str> = self.token.into();
        Some(Settlement {
            at: DateTime::<Utc>::from_timestamp_micros(self.at_us)?,
            reservation: self.reservation.map(|h| Reservation {
                id: h.id,
                token: token.to_string(),
                windows: h.windows,
                amount: Amount {
                    requests: h.requests,
                    tokens: h.tokens,
                    usd_micros: h.usd_micros,
                },
            }),
            token,
            used: self.used,
            model: self.model.into(),
            upstream: self.upstream.into(),
            input: self.input,
            cached: self.cached,
            output: self.output,
            usd_micros: self.usd_micros,
            estimated: self.estimated,
            windows: self.windows,
            row: self.row,
        })
    }
}

/// The journal of an open store.
#[derive(Debug)]
pub struct Journal {
    base: PathBuf,
    epoch: u64,
    /// Open segments, oldest first; appends go to the last.
    segments: Vec<(u64, File)>,
    /// Whether the newest segment has a line.
    dirty: bool,
    /// The line being written, kept between appends.
    line: Vec<u8>,
    /// The next segment, opened ahead.
    spare: Option<(u64, File)>,
}

/// Deletes segments [`Journal::committed`] let go (their lines are in the
/// file; one left behind is only read and skipped at the next start).
pub fn remove(segments: Vec<PathBuf>) {
    for path in segments {
        let _ = std::fs::remove_file(path);
    }
}

/// A line buffer grown past this (a settlement with many windows) is not kept.
const KEEP_LINE_BUFFER: usize = 16 << 10;

fn segment(base: &Path, n: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!("-{n}"));
    PathBuf::from(name)
}

/// The segments beside `base` (`base-N`), by number.
fn segments(base: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let stem = base
        .file_name()
        .map(|n| format!("{}-", n.to_string_lossy()))
        .unwrap_or_default();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix(&stem).and_then(|n| n.parse().ok()) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// What a journal left to settle: the lines of `epoch` past `seq`, in order.
pub fn unsettled(base: &Path, epoch: u64, seq: u64) -> std::io::Result<Vec<Settlement>> {
    let mut out = Vec::new();
    for (_, path) in segments(base)? {
        let text = std::fs::read(&path)?;
        for line in text.split(|b| *b == b'\n') {
            // A torn line (the process died inside its write) does not parse.
            let Ok(line) = serde_json::from_slice::<Line>(line) else {
                continue;
            };
            if line.e == epoch && line.s > seq {
                if let Some(s) = line.settlement() {
                    out.push(s);
                }
            }
        }
    }
    Ok(out)
}

impl Journal {
    /// Removes every segment beside `base` (their lines are in the file),
    /// and starts the journal of `epoch`.
    pub fn start(base: PathBuf, epoch: u64) -> std::io::Result<Self> {
        for (_, path) in segments(&base)? {
            std::fs::remove_file(path)?;
        }
        let mut journal = Self {
            base,
            epoch,
            segments: Vec::new(),
            dirty: false,
            line: Vec::new(),
            spare: None,
        };
        journal.open_segment(0)?;
        Ok(journal)
    }

    /// The epoch its lines carry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn open_segment(&mut self, n: u64) -> std::io::Result<()> {
        let file = Self::open_file(&segment(&self.base, n))?;
        self.segments.push((n, file));
        self.dirty = false;
        Ok(())
    }

    /// Appends `s` as line `seq`, in one write.
    pub fn append(&mut self, seq: u64, s: &Settlement) -> std::io::Result<()> {
        let line = &mut self.line;
        line.clear();
        write_line(line, self.epoch, seq, s)?;
        line.push(b'\n');
        let (_, file) = self
            .segments
            .last_mut()
            .ok_or_else(|| std::io::Error::other("no open segment"))?;
        file.write_all(line)?;
        if line.capacity() > KEEP_LINE_BUFFER {
            *line = Vec::new();
        }
        self.dirty = true;
        Ok(())
    }

    /// A batch is taken: later lines go to a new segment (the spare, opened
    /// beforehand by [`Journal::spare_wanted`], so no file is opened while
    /// the store's lock is held; else opened now). Returns the segment the
    /// batch's lines end in (to pass to [`Journal::committed`]); `None` when
    /// no new segment could be opened (then none is removed).
    pub fn cut(&mut self) -> Option<u64> {
        let last = self.segments.last().map_or(0, |(n, _)| *n);
        if self.dirty {
            match self.spare.take() {
                Some((n, file)) if n == last + 1 => {
                    self.segments.push((n, file));
                    self.dirty = false;
                }
                _ => {
                    if let Err(error) = self.open_segment(last + 1) {
                        tracing::error!(%error, "the usage journal cannot start a segment; the last one grows");
                        return None;
                    }
                }
            }
        }
        Some(last)
    }

    /// The path of the next segment, when no spare is open for it: open it
    /// (without the store's lock) and hand it over with [`Journal::spare`].
    pub fn spare_wanted(&self) -> Option<(u64, PathBuf)> {
        let next = self.segments.last().map_or(0, |(n, _)| *n) + 1;
        match &self.spare {
            Some((n, _)) if *n == next => None,
            _ => Some((next, segment(&self.base, next))),
        }
    }

    /// Opens a segment file to append to (for [`Journal::spare_wanted`]).
    pub fn open_file(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Keeps `file` as segment `n`'s, for the next [`Journal::cut`].
    pub fn spare(&mut self, n: u64, file: File) {
        self.spare = Some((n, file));
    }

    /// The batch cut at segment `upto` is in the file: segments up to it
    /// leave the journal (the newest, where appends go, stays). Returns
    /// them, for [`remove`] to delete without the store's lock.
    #[must_use]
    pub fn committed(&mut self, upto: u64) -> Vec<PathBuf> {
        let newest = self.segments.last().map(|(n, _)| *n);
        let mut gone = Vec::new();
        self.segments.retain(|(n, _)| {
            let done = *n <= upto && Some(*n) != newest;
            if done {
                gone.push(segment(&self.base, *n));
            }
            !done
        });
        gone
    }

    /// Bytes held in segments.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|(_, f)| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(n: i64) -> Settlement {
        Settlement {
            token: "alice".into(),
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
            reservation: Some(Reservation {
                id: format!("r{n}"),
                token: "alice".into(),
                windows: vec!["day:2026-12-01".into()],
                amount: Amount {
                    requests: 1,
                    tokens: 10,
                    usd_micros: 5,
                },
            }),
            used: true,
            model: "gpt-4o-mini".into(),
            upstream: "default".into(),
            input: n,
            cached: 0,
            output: 1,
            usd_micros: 3,
            estimated: false,
            windows: vec!["day:2026-12-01".into()],
            row: true,
        }
    }

    #[test]
    fn a_line_is_written_as_serde_would_write_it_and_read_back_whole() {
        let mut odd = settlement(-7);
        odd.token = "a\"b\\c\n\u{1}é中".into();
        if let Some(r) = odd.reservation.as_mut() {
            // A reservation is the settlement's token's (a line holds it once).
            r.token = odd.token.to_string();
        }
        odd.model = "m\u{7f}\u{2028}".into();
        odd.upstream = String::new().into();
        odd.windows = vec![];
        odd.used = false;
        odd.estimated = true;
        odd.row = false;
        odd.at = DateTime::<Utc>::from_timestamp_micros(-1).unwrap();
        (odd.cached, odd.output, odd.usd_micros) = (i64::MIN, i64::MAX, 0);
        let mut none = settlement(3);
        none.reservation = None;
        none.windows = vec!["a".into(), "b\"".into(), String::new()];
        let mut empty = settlement(4);
        if let Some(r) = empty.reservation.as_mut() {
            r.windows.clear();
            r.id = "\t".into();
            r.amount = Amount {
                requests: i64::MIN,
                tokens: -1,
                usd_micros: i64::MAX,
            };
        }
        for (epoch, seq, s) in [
            (7, 1, settlement(1)),
            (0, 0, odd),
            (u64::MAX, u64::MAX, none),
            (1, 2, empty),
        ] {
            let mut line = Vec::new();
            write_line(&mut line, epoch, seq, &s).unwrap();
            let oracle = serde_json::to_vec(&LineOut::of(epoch, seq, &s)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&oracle)
            );
            let back: Line = serde_json::from_slice(&line).unwrap();
            assert_eq!((back.e, back.s), (epoch, seq));
            assert_eq!(back.settlement(), Some(s));
        }
    }

    #[test]
    fn lines_past_the_files_sequence_are_settled_again_and_a_torn_one_is_skipped() {
        let dir = std::env::temp_dir().join(format!("gw-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("usage.db.journal");
        let mut journal = Journal::start(base.clone(), 7).unwrap();
        journal.append(1, &settlement(1)).unwrap();
        let cut = journal.cut().unwrap();
        assert_eq!(cut, 0);
        journal.append(2, &settlement(2)).unwrap();
        journal.append(3, &settlement(3)).unwrap();
        // The process dies inside a write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(segment(&base, 1))
            .unwrap()
            .write_all(br#"{"e":7,"s":4,"tok"#)
            .unwrap();
        // The file holds up to 2 (a commit of 1 and 2), of epoch 7.
        let left = unsettled(&base, 7, 2).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0], settlement(3));
        // Another epoch's lines are the file's already.
        assert!(unsettled(&base, 8, 0).unwrap().is_empty());
        // A committed cut removes its segments; the newest stays.
        remove(journal.committed(cut));
        assert!(!segment(&base, 0).exists() && segment(&base, 1).exists());
        // A spare opened ahead is the next cut's segment.
        let (n, path) = journal.spare_wanted().unwrap();
        assert_eq!(n, 2);
        journal.spare(n, Journal::open_file(&path).unwrap());
        assert!(journal.spare_wanted().is_none());
        assert_eq!(journal.cut(), Some(1));
        journal.append(5, &settlement(5)).unwrap();
        assert!(std::fs::metadata(segment(&base, 2)).unwrap().len() > 0);
        assert_eq!(unsettled(&base, 7, 4).unwrap(), vec![settlement(5)]);
        drop(journal);
        let again = Journal::start(base.clone(), 8).unwrap();
        assert_eq!(again.bytes(), 0);
        assert!(!segment(&base, 1).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
