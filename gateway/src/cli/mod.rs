//! The command line: `gateway run --config FILE` and the operator subcommands.
//!
//! Exit codes: 0 after a clean drain, 2 for a configuration mistake (naming the key or address),
//! 1 for a fatal fault while running (broker gone, store closed; a store that cannot write
//! only degrades the gateway).

mod credentials;
mod echo;
pub mod inspect;
mod requests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Roost gateway: an edge gateway for sleepy MQTT devices.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve devices until SIGINT/SIGTERM, then drain and exit 0.
    Run {
        /// The configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Device credentials: add (prints a generated secret once), remove, list.
    Device {
        /// What to do.
        #[command(subcommand)]
        action: DeviceAction,
        /// The configuration file (for `gateway.data_dir`).
        #[arg(long, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
    },
    /// Operator accounts (read-only MQTT access to status topics).
    Operator {
        /// What to do.
        #[command(subcommand)]
        action: OperatorAction,
        /// The configuration file (for `gateway.data_dir`).
        #[arg(long, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
    },
    /// Benchmark yardstick: the front door and rumqttd answering every request at once (no
    /// store, no workers), for `device-sim load --expect-202 false`.
    Echo {
        /// Where devices connect (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Stop after this long (e.g. `30s`); default: until SIGINT/SIGTERM.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// List stored requests (newest first).
    Requests {
        /// What to do.
        #[command(subcommand)]
        action: RequestsAction,
    },
    /// The gateway's status: live from its HTTP API when it answers, and from the store.
    Status {
        /// The configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Devices as the store knows them (list, show); credentials are `gateway device`.
    Devices {
        /// What to do.
        #[command(subcommand)]
        action: inspect::DevicesAction,
    },
    /// List dead letters (requests and replies the gateway gave up on).
    Deadletters {
        /// What to do.
        #[command(subcommand)]
        action: DeadlettersAction,
    },
    /// A consistent copy of the SQLite store in FILE, taken while the gateway serves (SQLite's
    /// online backup API), checked with `PRAGMA integrity_check`. To restore: stop the
    /// gateway, put FILE in place as `data_dir/roost.db` (remove `roost.db-wal` and
    /// `roost.db-shm`), start it. PostgreSQL: use `pg_dump` or `pg_basebackup`.
    Backup {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// Where the copy goes (written as FILE.partial, renamed once whole and checked).
        file: PathBuf,
    },
    /// The configured ONNX models (`[models.NAME]`).
    Models {
        /// What to do.
        #[command(subcommand)]
        action: ModelsAction,
    },
}

/// `gateway models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Loads every configured model as `gateway run` does and shows its inputs, outputs,
    /// timeout, fallback and the cost its warm-up measured. A model that does not load: exit 2.
    List {
        /// The configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `gateway requests ...`
#[derive(Debug, Subcommand)]
pub enum RequestsAction {
    /// List requests, newest first.
    List {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only in this state (queued, done, failed, expired, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One request in full: op, arguments, state, timings, its final reply (as JSON).
    Show {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The request id (a UUID, as in `requests list`).
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a queued request: its final 410 is held and delivered on its device's next wake.
    Cancel {
        /// The configuration file (for `data_dir` and `limits.reply_ttl_s`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The request id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `gateway deadletters ...`
#[derive(Debug, Subcommand)]
pub enum DeadlettersAction {
    /// List dead letters, newest first.
    List {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Puts a dead-lettered reply back in the outbox with a fresh reply TTL: it is delivered the
    /// next time its device wakes. (Requests refused at intake were never stored: the device
    /// must send them again.)
    Requeue {
        /// The configuration file (for `data_dir` and `limits.reply_ttl_s`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The dead letter's id (first column of `deadletters list`).
        id: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `gateway device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Provisions device ID and prints its secret (the MQTT password; user name = ID) once.
    Add {
        /// The device id: 1 to 64 characters of [A-Za-z0-9._-].
        id: String,
    },
    /// Removes device ID's credentials: its next connect is refused.
    Remove {
        /// The device id.
        id: String,
    },
    /// Lists provisioned devices.
    List,
}

/// `gateway operator ...`
#[derive(Debug, Subcommand)]
pub enum OperatorAction {
    /// Adds operator NAME; the password is read from standard input (first line) or prompted.
    Add {
        /// The operator name (MQTT user name): 1 to 64 characters of [A-Za-z0-9._-].
        name: String,
    },
    /// Removes operator NAME.
    Remove {
        /// The operator name.
        name: String,
    },
    /// Lists operators.
    List,
}

pub use crate::config::EXIT_CONFIG;

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Device { action, config } => match load(&config) {
            Ok(config) => credentials::device(&config, action),
            Err(code) => code,
        },
        Command::Operator { action, config } => match load(&config) {
            Ok(config) => credentials::operator(&config, action),
            Err(code) => code,
        },
        Command::Echo { listen, duration } => echo::run(listen, duration),
        Command::Requests { action } => match action {
            RequestsAction::List {
                config,
                device,
                state,
                limit,
                json,
            } => with_config(&config, |config| {
                requests::list_requests(config, device.as_deref(), state.as_deref(), limit, json)
            }),
            RequestsAction::Show { config, id, json } => {
                with_config(&config, |config| inspect::show_request(config, &id, json))
            }
            RequestsAction::Cancel { config, id, json } => {
                with_config(&config, |config| inspect::cancel_request(config, &id, json))
            }
        },
        Command::Status { config, json } => {
            with_config(&config, |config| inspect::status(config, json))
        }
        Command::Devices { action } => inspect::devices(action),
        Command::Deadletters { action } => match action {
            DeadlettersAction::List {
                config,
                limit,
                json,
            } => with_config(&config, |config| {
                requests::list_dead_letters(config, limit, json)
            }),
            DeadlettersAction::Requeue { config, id, json } => with_config(&config, |config| {
                requests::requeue_dead_letter(config, id, json)
            }),
        },
        Command::Backup { config, file } => {
            with_config(&config, |config| requests::backup(config, &file))
        }
        Command::Models {
            action: ModelsAction::List { config, json },
        } => match load(&config) {
            Ok(config) => match crate::models::list::print(&config.models, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("gateway: {error}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(code) => code,
        },
    }
}

/// An operator command's failure: what it prints, and its exit code: 2 ([`EXIT_CONFIG`]) for a
/// config mistake (a database that refuses `store.url`'s login, name or rights), 1 otherwise.
pub struct CliError {
    message: String,
    code: u8,
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError { message, code: 1 }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(error: crate::store::StoreError) -> Self {
        CliError {
            message: error.to_string(),
            code: error.exit_code(),
        }
    }
}

/// Loads the config and runs an operator command; its error is printed, with its exit code.
pub(crate) fn with_config(
    path: &std::path::Path,
    command: impl FnOnce(&Config) -> Result<(), CliError>,
) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match command(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {}", error.message);
            ExitCode::from(error.code)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("gateway: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::logging::init(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
