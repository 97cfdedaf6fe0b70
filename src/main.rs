//! The `fishjam-bridge` command: parse the arguments, call the command's
//! function in the library, and map its outcome to an exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use fishjam_bridge::bridge::drain;
use fishjam_bridge::bridge::run::{self, Demo, RunError};
use fishjam_bridge::config::ConfigError;
use fishjam_bridge::simulator::simulate::{self, SimulateArgs};
use fishjam_bridge::telemetry::Chain;
use fishjam_bridge::tools::check::{self, CheckError};
use fishjam_bridge::tools::dead_letters::{self, ListError, RedriveError};
use fishjam_bridge::tools::decode::{self, InputFormat, Undecodable};
use fishjam_bridge::tools::tap::Filter;
use fishjam_bridge::tools::{spool, tap, top};

// glibc's allocator contends between the runtime's threads on the hot path
// (one allocation set per event); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages for its arena, and the kernel
/// then backs it 2 MiB at a time (with `enabled = always` every anonymous
/// mapping is): an idle bridge holds 17 MiB instead of 13.5 (BENCHMARKS.md).
/// The bridge opts out, as `MIMALLOC_ALLOW_THP=0` does, and must do so before
/// mimalloc's constructor sets up the arena: `main` is too late. So this runs
/// from `.preinit_array`, which the loader calls before any constructor of
/// the executable.
#[cfg(target_os = "linux")]
extern "C" fn keep_small_pages() {
    // SAFETY: a process-wide flag with no pointers; failure changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".preinit_array"]
static KEEP_SMALL_PAGES: extern "C" fn() = keep_small_pages;

/// Exit status for a configuration the bridge cannot run with (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit status for input that cannot be read as what it should be
/// (EX_DATAERR): a body `decode` cannot read, a line that is not a dead
/// letter.
const EXIT_DATA: u8 = 65;
/// Exit status for a file that cannot be read (EX_NOINPUT).
const EXIT_NO_INPUT: u8 = 66;
/// Exit status for a target that cannot be reached, or that did not take
/// everything (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    version,
    about = "Carries Fishjam server notifications to message queues as JSON events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge with a configuration file (and the environment).
    Run {
        #[arg(long, short, env = "FISHJAM_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// Once both listeners are bound, write their addresses here as JSON
        /// (`{"webhook": "127.0.0.1:8080", "admin": …}`, null when disabled):
        /// for scripts and tests that listen on port 0.
        #[arg(long)]
        addresses_file: Option<PathBuf>,
    },
    /// Check a configuration and print it with secrets masked.
    CheckConfig {
        #[arg(long, short, env = "FISHJAM_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// Also reach every sink and, with the notifier on, Fishjam, as the
        /// bridge would at start-up; one line per target. Exit status 69 when
        /// any cannot be reached.
        #[arg(long)]
        connect: bool,
        /// How long each target may take, with --connect.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Decode one webhook body or notifier frame and print its events, one JSON per line.
    Decode {
        /// How the input is written.
        #[arg(long, value_enum, default_value = "raw")]
        input_format: InputFormat,
        /// Written into the events' fishjam_id.
        #[arg(long, default_value = "decode")]
        fishjam_id: String,
        /// A file, or - for standard input.
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Act as Fishjam: serve the notifier WebSocket and the REST API for rooms and
    /// peers, and post webhooks; optionally play simulated room lifecycles.
    Simulate(Box<SimulateArgs>),
    /// Read a dead-letter file (`pipeline.dead_letter_path`).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Look into a spool's directory (a stopped or running replica's).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Print the events a running bridge accepts, live, as JSON lines
    /// (needs `admin.tap = true` in its configuration). A line on stderr
    /// says when this client read too slowly and events were skipped.
    Tap {
        /// The bridge's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// Only the events of this room.
        #[arg(long)]
        room: Option<String>,
        /// Only events of this type (docs/events.md), such as peerConnected.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events from this source: webhook, notifier or reconciled.
        #[arg(long)]
        source: Option<String>,
        /// PEM certificates to trust beside the platform's, for an admin
        /// listener served with TLS under a private CA.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// A file holding the admin listener's bearer token (admin.token_file).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// A live view of a running bridge, from its admin listener: rates,
    /// sinks, lag, the spool and the notifier. q quits, p pauses, s sorts.
    Top {
        /// The bridge's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// How often to read it.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: Duration,
        /// PEM certificates to trust beside the platform's, as for tap.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// A file holding the admin listener's bearer token, as for tap.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Run the simulator into a bridge that prints events on stdout, until Ctrl-C.
    Demo {
        /// Stop after this long (e.g. 10s); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Notifications per second.
        #[arg(long, default_value_t = 10)]
        rate: u64,
        /// Rooms alive at once.
        #[arg(long, default_value_t = 3)]
        rooms: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// What the file holds, by sink and reason: how many, of which event
    /// types, first and last.
    List { file: PathBuf },
    /// Publish the dead letters again, each through the configured sink that
    /// refused it, with its original event id; what a sink acknowledges
    /// leaves the file, the rest stays. Exit status 69 when some are left.
    Redrive {
        file: PathBuf,
        #[arg(long, short, env = "FISHJAM_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// Only the dead letters of this sink.
        #[arg(long)]
        sink: Option<String>,
        /// How long connecting to a sink, and each batch, may take.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            addresses_file,
        } => ran(run::run(config.as_deref(), addresses_file.as_deref())),
        Command::CheckConfig {
            config,
            connect,
            timeout,
        } => checked(check::check_config(
            config.as_deref(),
            connect.then_some(timeout),
        )),
        Command::Decode {
            input_format,
            fishjam_id,
            input,
        } => decoded(decode::decode(input_format, &fishjam_id, &input)),
        Command::Simulate(args) => report(simulate::simulate(*args)),
        Command::DeadLetters { action } => dead_letters_command(action),
        Command::Spool {
            action: SpoolAction::Inspect { dir },
        } => report(spool::inspect(&dir).map_err(anyhow::Error::from)),
        Command::Spool {
            action: SpoolAction::Drain { config, dir },
        } => ran(drain::drain(config.as_deref(), dir.as_deref())),
        Command::Tap {
            admin,
            room,
            event_type,
            source,
            ca_file,
            token_file,
        } => {
            let filter = Filter {
                room,
                event_type,
                source,
            };
            tap_events(&admin, &filter, ca_file, token_file)
        }
        Command::Top {
            admin,
            every,
            ca_file,
            token_file,
        } => report(top::top(
            &admin,
            every,
            ca_file.as_deref(),
            token_file.as_deref(),
        )),
        Command::Demo {
            duration,
            rate,
            rooms,
            seed,
        } => report(run::demo(Demo {
            duration,
            rate,
            rooms,
            seed,
        })),
    }
}

#[derive(Subcommand)]
enum SpoolAction {
    /// Print what the spool in DIR holds (bodies, events, bytes, each
    /// sink's cursor and the bodies it lacks, the oldest body's age) as
    /// JSON; it reads a copy, never writing the replica's files.
    Inspect { dir: PathBuf },
    /// Deliver what a stopped replica's spool holds to the configured
    /// sinks, with no source running, and exit once every sink has it
    /// (0), or when stopped early (1, the rest stays in the spool). Prints
    /// what was delivered as JSON.
    Drain {
        #[arg(long, short, env = "FISHJAM_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// The spool's directory, instead of the configuration's
        /// `spool.path`: a stopped replica's volume mounted here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `dead-letters list` and `dead-letters redrive`.
fn dead_letters_command(action: DeadLetterAction) -> ExitCode {
    match action {
        DeadLetterAction::List { file } => listed(dead_letters::list(&file)),
        DeadLetterAction::Redrive {
            file,
            config,
            sink,
            timeout,
        } => redriven(dead_letters::redrive(
            &file,
            config.as_deref(),
            sink.as_deref(),
            timeout,
        )),
    }
}

/// `tap`: the events the filter passes, from the admin listener.
fn tap_events(
    admin: &str,
    filter: &Filter,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> ExitCode {
    tapped(tap::tap(
        admin,
        filter,
        ca_file.as_deref(),
        token_file.as_deref(),
    ))
}

/// `run`: 64 when the configuration is not valid, 1 for any other failure.
fn ran(result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(error)) => config_failed(&error),
        Err(RunError::Failed(error)) => report(Err(error)),
    }
}

/// `check-config`: 64 for an invalid configuration, 69 for a target that
/// cannot be reached, so that systemd's `ExecStartPre` and an init
/// container can tell them apart.
fn checked(result: Result<(), CheckError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CheckError::Config(error)) => config_failed(&error),
        // The report on stdout already ends with the count.
        Err(CheckError::Unreachable { .. }) => ExitCode::from(EXIT_UNAVAILABLE),
    }
}

/// `decode`: 65 for input that gives no events.
fn decoded(result: Result<(), Undecodable>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fishjam-bridge decode: {}", Chain(&error));
            ExitCode::from(EXIT_DATA)
        }
    }
}

/// `dead-letters list`: 66 when the file cannot be read, 65 when a line
/// is not a dead letter.
fn listed(result: Result<(), ListError>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("fishjam-bridge: {}", Chain(&error));
    ExitCode::from(match error {
        ListError::Read { .. } => EXIT_NO_INPUT,
        ListError::NotDeadLetters { .. } => EXIT_DATA,
    })
}

/// `dead-letters redrive`: 64 for an invalid configuration, 66 when the
/// file cannot be read or rewritten, 69 when some dead letters are left.
fn redriven(result: Result<(), RedriveError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RedriveError::Config(error)) => config_failed(&error),
        Err(RedriveError::File(error)) => {
            eprintln!("fishjam-bridge: {error:#}");
            ExitCode::from(EXIT_NO_INPUT)
        }
        // The report on stdout already says, sink by sink, what is left
        // and why.
        Err(RedriveError::Left { .. }) => ExitCode::from(EXIT_UNAVAILABLE),
    }
}

/// `tap`: 69 when the bridge's tap cannot be reached or read.
fn tapped(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fishjam-bridge: {error:#}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// Any other command: 1 for a failure, which is logged too.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("fishjam-bridge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failed(error: &ConfigError) -> ExitCode {
    eprintln!("fishjam-bridge: the configuration is not valid:");
    for problem in &error.problems {
        eprintln!("  - {problem}");
    }
    ExitCode::from(EXIT_CONFIG)
}
