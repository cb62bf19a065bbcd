//! The command line. `device-sim --help` documents every scenario; each subcommand's help
//! documents its flags. Parsed here as written, then turned into typed settings by the scenario.
//!
//! Exit codes: 0 when the run passed, 1 when anything was lost or mismatched (or nothing was
//! answered, or a device never connected), 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::workload::Mix;

/// device-sim: simulated sleepy MQTT devices against a Roost gateway — the demo, the load
/// generator and the end-to-end checker.
///
/// Scenarios:
///   run   devices send `stats` (or a --mix of ops) requests and every reply is verified: one
///         202, then one final reply with the same correlation and request id and a result
///         recomputed locally. Add --wake-every/--listen for sleepy devices with persistent
///         sessions, presence, held replies and acks.
///   load  offered load to find saturation: open loop at --rate req/s, or --closed with
///         --inflight requests outstanding per device. Replies are verified as in `run`.
///   echo  a trivial responder answering each request at once with a final 200 (no store, no
///         workers), over any broker. For the gateway's own message path with nothing behind
///         it, run `gateway echo --listen 127.0.0.1:0` and measure it with
///         `load --expect-202 false`.
///   flood wrong operator passwords from --connections loops over --sources loopback addresses,
///         for --duration or --attempts: the login flood a gateway must shrug off. Loopback
///         only; reports the answers (CONNACK codes, closes) and their latency.
///   send  one request by hand as one device, arguments as JSON: prints the 202 and the final
///         reply as JSON lines, acks it, exits 0 for a final 2xx.
///
/// A run prints a human summary, writes --json FILE ('-' for stdout) and exits 1 when anything
/// was lost or mismatched.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version, verbatim_doc_comment, after_help = EXAMPLES)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  device-sim run --broker 127.0.0.1:1883 --devices 300 --duration 20s --json report.json
  device-sim run --devices 200 --wake-every 30s --listen 2s --mix stats=8,histogram=1,anomaly=1 \\
      --telemetry-every 5 --duration 5m
  device-sim load --devices 100 --inflight 4 --closed --duration 10s --gateway-pid $(pidof gateway)
  device-sim load --devices 100 --rate 5000 --duration 30s
  gateway echo --listen 127.0.0.1:0        # then: load --broker <printed addr> --expect-202 false
  device-sim/bench.sh 10s 10x4 100x4      # echo yardstick vs gateway, release builds
  device-sim flood --broker 127.0.0.1:1883 --user admin --connections 32 --duration 15s
  device-sim send --device dev-1 --op stats --args '{\"values\": [1, 2, 3, 4]}'";

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Devices send requests and every reply is verified (the end-to-end checker and demo).
    Run(RunArgs),
    /// Offered load, open loop (--rate) or closed loop (--closed), to find saturation.
    Load(LoadArgs),
    /// A trivial responder: a final 200 to every request at once (the broker's ceiling).
    Echo(EchoArgs),
    /// Wrong operator passwords from many connections: the login flood, loopback only.
    Flood(FloodArgs),
    /// One request by hand as device --device: prints the 202 and the final reply as JSON.
    Send(crate::scenario::send::SendArgs),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 10s, 500ms, 2m)"))
}

/// Flags every fleet scenario shares.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The gateway's (or any MQTT 5 broker's) address.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub broker: String,
    /// Simulated devices, one lightweight task each.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// How long devices keep sending new requests.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Stop each device after this many requests (the run ends early when all are answered).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// After sending stops, wait this long for missing replies; then they count as lost.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub grace: Duration,
    /// Write the JSON report here ('-' = stdout, which also hides the progress bar).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Device ids are PREFIX-0, PREFIX-1...; default: `sim-<random>`, fresh every run.
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,
    /// Values per request (random floats).
    #[arg(long, default_value_t = 16)]
    pub values: usize,
    /// Ops by weight, e.g. stats=8,histogram=1,anomaly=1. Only stats results are recomputed;
    /// the others are checked for shape.
    #[arg(long, default_value = "stats=1")]
    pub mix: Mix,
    /// The model `infer` in the mix asks for (a `[models.NAME]` of the gateway), sending 1 to 4
    /// rows of --infer-features random values; e.g. --mix stats=9,infer=1 for 10 % inference.
    #[arg(long, default_value = "mlp", value_name = "NAME")]
    pub infer_model: String,
    /// Features per row of the `infer` input (the model's input is [N, FEATURES]).
    #[arg(long, default_value_t = 8, value_name = "FEATURES")]
    pub infer_features: usize,
    /// Require a 202 carrying the request id that the final reply repeats (a final that overtakes
    /// its 202 passes if the 202 follows before the run ends). Use false against `device-sim
    /// echo`, which only sends final replies. Sleepy devices never require it: a 202 is not held
    /// for a device that went back to sleep.
    #[arg(long = "expect-202", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub expect_202: bool,
    /// New connections per second while the fleet connects.
    #[arg(long, default_value_t = 500.0, value_name = "PER_S")]
    pub connect_rate: f64,
    /// Each device must connect and subscribe within this.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Add this process's resident memory (the gateway's) to the report.
    #[arg(long, value_name = "PID")]
    pub gateway_pid: Option<u32>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Random seed for values and jitter (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `device-sim run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Shared flags.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Requests outstanding per device (connected devices).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Pause between a final reply and the device's next request (connected devices).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// Sleepy devices: wake this often (connect, presence, collect + ack replies, one request,
    /// listen, disconnect), with a persistent session.
    #[arg(long, value_parser = duration, value_name = "D")]
    pub wake_every: Option<Duration>,
    /// Sleepy devices: stay connected this long on each wake.
    #[arg(long, default_value = "2s", value_parser = duration, requires = "wake_every")]
    pub listen: Duration,
    /// Sleepy devices: vary each sleep by ± this fraction (0 to 1).
    #[arg(long, default_value_t = 0.1, requires = "wake_every")]
    pub jitter: f64,
    /// Sleepy devices: upload telemetry every N wakes (0 = never).
    #[arg(long, default_value_t = 0, requires = "wake_every", value_name = "N")]
    pub telemetry_every: u32,
}

/// `device-sim load`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("loop").required(true).args(["rate", "closed"])))]
pub struct LoadArgs {
    /// Shared flags.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Requests outstanding per device: the window (--closed) or a safety cap (--rate).
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
    /// Open loop: offer this many requests per second in total, spread over the devices, on a
    /// fixed schedule; latency counts from each request's scheduled time.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Closed loop: each device keeps --inflight requests outstanding, sending the next at once.
    #[arg(long)]
    pub closed: bool,
}

/// `device-sim echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// The broker to serve on.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub broker: String,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// MQTT client id of the responder.
    #[arg(long, default_value = "device-sim-echo")]
    pub client_id: String,
}

/// `device-sim flood`.
#[derive(Debug, Args)]
pub struct FloodArgs {
    /// The gateway's device-facing address: a loopback IP:PORT.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "IP:PORT")]
    pub broker: String,
    /// The user name to try (an existing operator's: names are not secret).
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// The (wrong) password sent with every attempt.
    #[arg(long, default_value = "not-the-password")]
    pub password: String,
    /// Concurrent connections, each a loop of connect → CONNECT → answer → close.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Loopback source addresses the connections are spread over (127.0.0.2 and up; 1 to 250).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Stop after this long.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub duration: Duration,
    /// Stop after this many attempts in total.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub attempts: u64,
    /// Write the JSON report here ('-' = stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Parses the command line and runs the scenario.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttc=error,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("device-sim: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(crate::scenario::dispatch(cli.command))
}
