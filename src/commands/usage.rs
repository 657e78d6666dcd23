//! The `usage` admin subcommands: set up a store, and report what was used.
//!
//! - `usage init --store STORE` creates the SQLite schema or the DynamoDB
//!   table (the same key schema `template.yaml` declares, with TTL on);
//! - `usage report --store STORE [--period day|month] [--date D] [--token N]
//!   [--json]`: one row per token and model for a UTC day or month (the
//!   current month by default), and, given the token list, each token's
//!   limits and what is left of them now.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};

use super::CommandError;
use crate::clock::Clock;
use crate::spend::store::{Period, Row, Store};
use crate::spend::Measure;
use crate::tokens::format;

/// `chatgpt-gateway usage …`
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Create the store's tables (SQLite schema, or the DynamoDB table with TTL).
    Init {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show usage per token and model for a UTC day or month.
    Report {
        #[command(flatten)]
        store: StoreArg,
        /// `day` or `month`.
        #[arg(long, value_enum, default_value = "month")]
        period: PeriodKind,
        /// The day (YYYY-MM-DD) or month (YYYY-MM) [default: the current one, UTC].
        #[arg(long)]
        date: Option<String>,
        /// Only this token's rows.
        #[arg(long)]
        token: Option<String>,
        /// A token list, to show each token's limits and what is left of them.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
        /// Print a JSON array of rows instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The store flag.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// sqlite:PATH or dynamodb:TABLE.
    #[arg(long, env = crate::config::USAGE_STORE)]
    store: String,
}

/// A report's period.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PeriodKind {
    /// One UTC day.
    Day,
    /// One UTC month.
    Month,
}

async fn open(arg: &StoreArg) -> Result<std::sync::Arc<dyn Store>, CommandError> {
    crate::spend::open_reader(&arg.store)
        .await
        .map_err(|problem| CommandError::Flag {
            flag: "--store",
            problem,
        })?
        .ok_or_else(|| CommandError::Flag {
            flag: "--store",
            problem: "`off` keeps no usage; name sqlite:PATH or dynamodb:TABLE".into(),
        })
}

/// Runs a `usage` subcommand.
/// `clock` says what "today" and "this month" are, and where each limit's
/// window stands.
pub async fn run(command: UsageCommand, clock: &Clock) -> Result<(), CommandError> {
    match command {
        UsageCommand::Init { store } => {
            let store = open(&store).await?;
            store
                .init()
                .await
                .map_err(|e| CommandError::Refused(e.to_string()))?;
            println!("{}: ready", store.name());
            Ok(())
        }
        UsageCommand::Report {
            store,
            period,
            date,
            token,
            tokens_file,
            json,
        } => {
            let period = parse_period(period, date.as_deref(), clock.now())?;
            let store = open(&store).await?;
            let rows = store
                .report(period.clone(), token.clone())
                .await
                .map_err(|e| CommandError::Refused(e.to_string()))?;
            if json {
                let text = serde_json::to_string_pretty(&rows).expect("rows serialize");
                println!("{text}");
                return Ok(());
            }
            print_table(&period, &rows);
            if let Some(path) = tokens_file {
                print_limits(&*store, &path, token.as_deref(), clock.now()).await?;
            }
            Ok(())
        }
    }
}

fn parse_period(
    kind: PeriodKind,
    date: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Period, CommandError> {
    let bad = |problem: &str| CommandError::Flag {
        flag: "--date",
        problem: problem.into(),
    };
    let today = now.date_naive();
    Ok(match (kind, date) {
        (PeriodKind::Day, None) => Period::Day(today.format("%Y-%m-%d").to_string()),
        (PeriodKind::Month, None) => Period::Month(today.format("%Y-%m").to_string()),
        (PeriodKind::Day, Some(d)) => {
            NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| bad("a day is written YYYY-MM-DD"))?;
            Period::Day(d.to_owned())
        }
        (PeriodKind::Month, Some(m)) => {
            NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d")
                .map_err(|_| bad("a month is written YYYY-MM"))?;
            Period::Month(m.to_owned())
        }
    })
}

/// A name as a terminal may show it: control characters escaped (`\u{1b}`),
/// and cut at 256 characters, so that no stored name can drive the
/// terminal or flood it.
fn printable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(256)
        .flat_map(char::escape_debug)
        .collect();
    if name.chars().nth(256).is_some() {
        out.push('…');
    }
    out
}

fn print_table(period: &Period, rows: &[Row]) {
    let label = match period {
        Period::Day(d) => d.clone(),
        Period::Month(m) => m.clone(),
        Period::Days(a, b) => format!("{a}..{b}"),
    };
    println!("usage for {label} (UTC)");
    println!(
        "{:<20} {:<28} {:<16} {:>8} {:>12} {:>10} {:>12} {:>12} {:>9}",
        "token",
        "model",
        "upstream",
        "requests",
        "input",
        "cached",
        "output",
        "cost_usd",
        "estimated"
    );
    for r in rows {
        println!(
            "{:<20} {:<28} {:<16} {:>8} {:>12} {:>10} {:>12} {:>12.6} {:>9}",
            printable(&r.token),
            printable(&r.model),
            printable(&r.upstream),
            r.requests,
            r.input_tokens,
            r.cached_tokens,
            r.output_tokens,
            r.cost_usd as f64 / 1e6,
            r.estimated_requests
        );
    }
    if rows.is_empty() {
        println!("(no usage)");
    }
}

async fn print_limits(
    store: &dyn Store,
    path: &std::path::Path,
    only: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), CommandError> {
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Flag {
        flag: "--tokens-file",
        problem: format!("{}: {e}", path.display()),
    })?;
    let list =
        format::parse(&text, chrono::FixedOffset::east_opt(0).expect("UTC")).map_err(|e| {
            CommandError::Flag {
                flag: "--tokens-file",
                problem: e.to_string(),
            }
        })?;
    println!();
    println!(
        "{:<20} {:<20} {:>14} {:>14} {:>14} {:>14}  resets",
        "token", "limit", "max", "used", "reserved", "left"
    );
    for entry in list.tokens.entries() {
        if only.is_some_and(|name| name != &*entry.name) {
            continue;
        }
        let Some(limits) = entry.rules.as_ref().and_then(|r| r.limits.as_ref()) else {
            continue;
        };
        let windows = limits.windows();
        let states = store
            .windows(entry.name.to_string(), windows.clone(), now)
            .await
            .map_err(|e| CommandError::Refused(e.to_string()))?;
        for limit in limits.iter() {
            let i = windows.iter().position(|w| *w == limit.window).unwrap_or(0);
            let used = limit.measure.of(&states[i].used);
            let reserved = limit.measure.of(&states[i].reserved);
            let show = |v: i64| match limit.measure {
                Measure::Usd => format!("${:.4}", v as f64 / 1e6),
                _ => v.to_string(),
            };
            let resets = limit
                .window
                .end(now)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "never".into());
            println!(
                "{:<20} {:<20} {:>14} {:>14} {:>14} {:>14}  {resets}",
                entry.name,
                limit.key,
                show(limit.max),
                show(used),
                show(reserved),
                show(
                    limit
                        .max
                        .saturating_sub(crate::limits::counter_add(used, reserved))
                        .max(0)
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printed_escaped_and_bounded() {
        assert_eq!(printable("gpt-4o\u{1b}[2J"), "gpt-4o\\u{1b}[2J");
        assert_eq!(printable("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(printable(&"m".repeat(300)).chars().count(), 257);
    }

    #[test]
    fn today_and_this_month_are_the_clocks() {
        use chrono::TimeZone;
        let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap());
        let day = |c: &Clock| parse_period(PeriodKind::Day, None, c.now()).unwrap();
        assert_eq!(day(&clock), Period::Day("2026-12-31".into()));
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(day(&clock), Period::Day("2027-01-01".into()));
        assert_eq!(
            parse_period(PeriodKind::Month, None, clock.now()).unwrap(),
            Period::Month("2027-01".into())
        );
        assert_eq!(
            parse_period(PeriodKind::Day, Some("2026-02-03"), clock.now()).unwrap(),
            Period::Day("2026-02-03".into()),
            "a date given is the date used"
        );
    }
}
