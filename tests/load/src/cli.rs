//! The command line: one subcommand per scenario, each sharing the target
//! and run options; `chart` to compare runs; `wait` for scripts that start
//! a server. [`execute`] runs a parsed command line.

use crate::chart::{ChartOptions, draw_chart, write_markdown};
use crate::protocol::{OCTET_STREAM, create_stream, delete_stream};
use crate::report::{Outcome, RunInfo, RunRecord, append_json_line, read_records, render_table};
use crate::scenarios::append::AppendOptions;
use crate::scenarios::churn::ChurnOptions;
use crate::scenarios::fanout::FanoutOptions;
use crate::scenarios::live::LiveOptions;
use crate::scenarios::read::ReadOptions;
use crate::scenarios::subscriptions::SubscriptionsOptions;
use crate::scenarios::{RunContext, append, churn, fanout, live, read, subscriptions};
use crate::target::Target;
use crate::units::parse_duration;
use anyhow::{Context, ensure};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const EXAMPLES: &str = "\
Examples:
  ds-load append --url http://127.0.0.1:4437/v1/stream --connections 16 --streams 16 --body-size 256
  ds-load read   --url http://127.0.0.1:4437/v1/stream --stream-size 1MiB --connections 8
  ds-load live   --url http://127.0.0.1:4437/v1/stream --rate 1000 --subscribers 100 --transport sse
  ds-load fanout --url http://127.0.0.1:4437/v1/stream --subscribers 10000 --server-pid 1234
  ds-load churn  --url http://127.0.0.1:4437/v1/stream --connections 8
  ds-load subscriptions --url http://127.0.0.1:4437/v1/stream --streams 10000 [--no-subscription]
  ds-load chart  --out chart.svg --markdown table.md results.jsonl";

/// Load generator for Durable Streams servers.
#[derive(Debug, Parser)]
#[command(name = "ds-load", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// C connections append to N streams as fast as the server answers.
    Append {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: AppendOptions,
    },
    /// C connections repeatedly read one prepared stream whole, verifying
    /// every byte.
    Read {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: ReadOptions,
    },
    /// One writer at a fixed rate, K subscribers: delivery latency and
    /// exactly-once, in-order delivery.
    Live {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: LiveOptions,
    },
    /// Thousands of SSE subscribers on one stream: who stays connected,
    /// delivery latency, server memory.
    Fanout {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: FanoutOptions,
    },
    /// Create → append → read → delete cycles.
    Churn {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: ChurnOptions,
    },
    /// Appends to random streams under a pull-wake subscription on every
    /// stream (or none): append cost and wake latency.
    Subscriptions {
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        options: SubscriptionsOptions,
    },
    /// Compare runs: an SVG chart (and optionally a markdown table) from
    /// files written with --json.
    Chart(ChartOptions),
    /// Wait until the server at --url can create and delete a stream.
    Wait(WaitOptions),
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Stream base URL, e.g. http://127.0.0.1:4437/v1/stream (plain HTTP).
    #[arg(long, env = "DS_LOAD_URL")]
    pub url: String,
    /// Sent as `Authorization: Bearer <TOKEN>` with every request.
    #[arg(long, env = "DS_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long the load lasts, e.g. 10s or 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Name of the target in reports and charts [default: the URL].
    #[arg(long)]
    pub label: Option<String>,
    /// Append the run's record to FILE as one line of JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Longest time one request may take.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Start of the names of the streams the run creates.
    #[arg(long, default_value = "ds-load")]
    pub stream_prefix: String,
    /// Leave the run's streams on the server afterwards.
    #[arg(long)]
    pub keep_streams: bool,
    /// No progress line or warnings on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Exit with status 2 if the run saw errors, lost, duplicated or
    /// reordered messages, or corrupt reads.
    #[arg(long)]
    pub strict: bool,
}

impl RunOptions {
    /// The run context these options describe.
    pub fn context(&self) -> anyhow::Result<RunContext> {
        ensure!(
            !self.stream_prefix.is_empty()
                && self
                    .stream_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "--stream-prefix may hold only letters, digits, '-', '_' and '.'"
        );
        let target = Target::new(&self.url, self.token.as_deref())?;
        let mut context = RunContext::new(
            Arc::new(target),
            self.duration,
            self.request_timeout,
            &self.stream_prefix,
        );
        context.quiet = self.quiet;
        context.keep_streams = self.keep_streams;
        Ok(context)
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.url.clone())
    }
}

/// Options of `wait`.
#[derive(Debug, Clone, Args)]
pub struct WaitOptions {
    /// Stream base URL, e.g. http://127.0.0.1:4437/v1/stream.
    #[arg(long, env = "DS_LOAD_URL")]
    pub url: String,
    /// Sent as `Authorization: Bearer <TOKEN>`.
    #[arg(long, env = "DS_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Append { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = append::run(&context, &options).await?;
            finish(&run, "append", options.case(), started, &options, &outcome)
        }
        Command::Read { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = read::run(&context, &options).await?;
            finish(&run, "read", options.case(), started, &options, &outcome)
        }
        Command::Live { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = live::run(&context, &options).await?;
            finish(&run, "live", options.case(), started, &options, &outcome)
        }
        Command::Fanout { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = fanout::run(&context, &options).await?;
            finish(&run, "fanout", options.case(), started, &options, &outcome)
        }
        Command::Churn { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = churn::run(&context, &options).await?;
            finish(&run, "churn", options.case(), started, &options, &outcome)
        }
        Command::Subscriptions { run, options } => {
            let context = run.context()?;
            let started = unix_now();
            let outcome = subscriptions::run(&context, &options).await?;
            finish(
                &run,
                "subscriptions",
                options.case(),
                started,
                &options,
                &outcome,
            )
        }
        Command::Chart(options) => chart(&options),
        Command::Wait(options) => wait(&options).await,
    }
}

/// Prints the table, appends the JSON record, decides the exit status.
fn finish(
    run: &RunOptions,
    scenario: &'static str,
    case: String,
    started_unix_s: u64,
    parameters: &impl Serialize,
    outcome: &impl Outcome,
) -> anyhow::Result<ExitCode> {
    let info = RunInfo {
        scenario,
        case,
        label: run.label(),
        url: run.url.clone(),
        started_unix_s,
        duration_s: run.duration.as_secs_f64(),
    };
    let record = RunRecord::new(info, parameters, outcome)?;
    print!(
        "{}",
        render_table(&record, &outcome.rows(), &outcome.notes())
    );
    if let Some(path) = &run.json {
        append_json_line(path, &record)
            .with_context(|| format!("writing the record to {}", path.display()))?;
    }
    if run.strict && record.headline.problems > 0 {
        eprintln!(
            "ds-load: {} problems (errors, lost/duplicated/reordered messages or corrupt reads)",
            record.headline.problems
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn chart(options: &ChartOptions) -> anyhow::Result<ExitCode> {
    let mut records = Vec::new();
    for input in &options.inputs {
        records.extend(read_records(input)?);
    }
    ensure!(!records.is_empty(), "the input files hold no run records");
    draw_chart(&records, &options.title, &options.out)?;
    println!("wrote {} ({} runs)", options.out.display(), records.len());
    if let Some(path) = &options.combined {
        let json = serde_json::to_vec_pretty(&records)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &options.markdown {
        write_markdown(&records, path).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Tries to create and delete a probe stream until it works.
async fn wait(options: &WaitOptions) -> anyhow::Result<ExitCode> {
    let target = Arc::new(Target::new(&options.url, options.token.as_deref())?);
    let context = RunContext::new(
        target,
        Duration::ZERO,
        Duration::from_secs(5),
        "ds-load-wait",
    );
    let name = context.stream_name("probe", 0);
    let deadline = Instant::now() + options.timeout;
    let mut last_error = String::from("no attempt made");
    while Instant::now() < deadline {
        let mut connection = context.connection();
        match create_stream(&mut connection, &name, OCTET_STREAM).await {
            Ok(_) => {
                delete_stream(&mut connection, &name)
                    .await
                    .with_context(|| format!("deleting the probe stream {name}"))?;
                println!("{} is ready", options.url);
                return Ok(ExitCode::SUCCESS);
            }
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "ds-load: {} not ready within {:?}: {last_error}",
        options.url, options.timeout
    );
    Ok(ExitCode::FAILURE)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::append::AppendMode;
    use crate::scenarios::delivery::Transport;

    #[test]
    fn parses_append_with_units() {
        let cli = Cli::try_parse_from([
            "ds-load",
            "append",
            "--url",
            "http://127.0.0.1:4437/v1/stream",
            "--duration",
            "1.5s",
            "--body-size",
            "4KiB",
            "--mode",
            "json",
            "--batch",
            "5",
        ])
        .unwrap();
        let Command::Append { run, options } = cli.command else {
            panic!("expected append");
        };
        assert_eq!(run.duration, Duration::from_millis(1500));
        assert_eq!(options.body_size, 4096);
        assert_eq!(options.mode, AppendMode::Json);
        assert_eq!(options.batch, 5);
        assert_eq!(options.connections, 16);
    }

    #[test]
    fn parses_read_and_live_defaults() {
        let cli = Cli::try_parse_from([
            "ds-load",
            "read",
            "--url",
            "http://127.0.0.1:1",
            "--stream-size",
            "1MiB",
        ])
        .unwrap();
        let Command::Read { options, .. } = cli.command else {
            panic!("expected read");
        };
        assert_eq!(options.stream_size, 1 << 20);

        let cli = Cli::try_parse_from([
            "ds-load",
            "live",
            "--url",
            "http://127.0.0.1:1",
            "--transport",
            "long-poll",
            "--rate",
            "50",
        ])
        .unwrap();
        let Command::Live { options, .. } = cli.command else {
            panic!("expected live");
        };
        assert_eq!(options.transport, Transport::LongPoll);
        assert_eq!(options.rate, 50.0);
    }

    #[test]
    fn parses_subscriptions_defaults_and_baseline_flag() {
        let cli = Cli::try_parse_from(["ds-load", "subscriptions", "--url", "http://127.0.0.1:1"])
            .unwrap();
        let Command::Subscriptions { options, .. } = cli.command else {
            panic!("expected subscriptions");
        };
        assert_eq!(options.streams, 10_000);
        assert_eq!(options.connections, 16);
        assert_eq!(options.pattern, "**");
        assert!(!options.no_subscription);
        assert_eq!(options.lease_ttl, Duration::from_secs(30));

        let cli = Cli::try_parse_from([
            "ds-load",
            "subscriptions",
            "--url",
            "http://127.0.0.1:1",
            "--no-subscription",
            "--ack",
            "all",
            "--transport",
            "long-poll",
        ])
        .unwrap();
        let Command::Subscriptions { options, .. } = cli.command else {
            panic!("expected subscriptions");
        };
        assert!(options.no_subscription);
        assert_eq!(
            options.ack,
            crate::scenarios::subscriptions::consumer::AckScope::All
        );
        assert_eq!(options.transport, Transport::LongPoll);
    }

    #[test]
    fn rejects_bad_units_and_prefixes() {
        assert!(
            Cli::try_parse_from([
                "ds-load",
                "append",
                "--url",
                "http://127.0.0.1:1",
                "--duration",
                "10 parsecs"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from([
            "ds-load",
            "churn",
            "--url",
            "http://127.0.0.1:1",
            "--stream-prefix",
            "a/b",
        ])
        .unwrap();
        let Command::Churn { run, .. } = cli.command else {
            panic!("expected churn");
        };
        assert!(run.context().is_err());
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
