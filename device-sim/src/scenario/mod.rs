//! The scenarios behind the subcommands: [`run`] and [`load`] turn their flags into a fleet
//! ([`DeviceConfig`] + [`Plan`]) and share [`execute`] for the report and the exit code;
//! [`echo`] is the trivial responder; [`flood`] the login flood; [`send`] sends one request by
//! hand.

pub mod echo;
pub mod flood;
pub mod load;
pub mod run;
pub mod send;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use rand::Rng;
use wire::DeviceId;

use crate::cli::{Command, FleetArgs};
use crate::device::{DeviceConfig, Pacing, Sleepy};
use crate::fleet::{self, Plan};
use crate::probe::Meter;
use crate::report::{Report, Settings};

/// Exit code for a usage mistake the parser could not catch.
pub const EXIT_USAGE: u8 = 2;

/// Runs a parsed command.
pub async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Echo(args) => echo::run(args).await,
        Command::Flood(args) => flood::run(args).await,
        Command::Send(args) => send::run(args).await,
    }
}

/// A usage error: printed, exit code 2.
pub fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("device-sim: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Splits `HOST:PORT`.
pub fn parse_broker(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("--broker {broker:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("--broker {broker:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("--broker {broker:?}: empty host"));
    }
    Ok((host.to_owned(), port))
}

/// Builds the fleet settings shared by `run` and `load`.
pub fn fleet_config(
    args: &FleetArgs,
    pacing: Pacing,
    sleepy: Option<Sleepy>,
) -> Result<(DeviceConfig, Plan), String> {
    let (host, port) = parse_broker(&args.broker)?;
    if args.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    let mut rng = rand::thread_rng();
    let id_prefix = match &args.id_prefix {
        Some(prefix) => prefix.clone(),
        None => format!("sim-{:06x}", rng.gen::<u32>() & 0xff_ffff),
    };
    let last = format!("{id_prefix}-{}", args.devices - 1);
    if DeviceId::parse(&last).is_none() {
        return Err(format!(
            "--id-prefix {id_prefix:?} gives device ids like {last:?}: ids are 1-64 of [A-Za-z0-9._-]"
        ));
    }
    let config = DeviceConfig {
        host,
        port,
        id_prefix,
        nonce: rng.gen(),
        seed: args.seed.unwrap_or_else(|| rng.gen()),
        mix: args.mix.clone(),
        values: args.values.max(2),
        infer: crate::workload::InferTarget {
            model: args.infer_model.clone(),
            features: args.infer_features.max(1),
        },
        strict_202: args.expect_202 && sleepy.is_none(),
        pacing,
        sleepy,
        max_requests: args.requests,
        connect_timeout: args.connect_timeout,
    };
    let progress = !args.quiet
        && args.json.as_deref() != Some(Path::new("-"))
        && std::io::stderr().is_terminal();
    let plan = Plan {
        devices: args.devices,
        duration: args.duration,
        grace: args.grace,
        connect_rate: args.connect_rate,
        progress,
    };
    Ok((config, plan))
}

/// The settings echoed in the report.
pub fn settings(
    scenario: &'static str,
    mode: &'static str,
    args: &FleetArgs,
    pacing: Pacing,
    rate_rps: Option<f64>,
) -> Settings {
    Settings {
        scenario,
        mode,
        devices: args.devices,
        inflight: pacing.inflight(),
        rate_rps,
        duration_s: args.duration.as_secs_f64(),
        grace_s: args.grace.as_secs_f64(),
        values: args.values,
        expect_202: args.expect_202,
        broker: args.broker.clone(),
    }
}

/// Runs the fleet, writes the report, prints the summary, and decides the exit code.
pub async fn execute(
    config: DeviceConfig,
    plan: Plan,
    settings: Settings,
    args: &FleetArgs,
) -> ExitCode {
    let meter = Meter::start(args.gateway_pid);
    let result = fleet::run(config, plan).await;
    let finals = result.stats.counts.replies_ok + result.stats.counts.replies_error;
    let report = Report::new(settings, &result, meter.finish(finals));
    let to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if to_stdout {
        eprintln!("{}", report.summary());
    } else {
        println!("{}", report.summary());
    }
    if let Some(path) = &args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(json) => json,
            Err(error) => {
                eprintln!("device-sim: cannot encode the report: {error}");
                return ExitCode::FAILURE;
            }
        };
        if to_stdout {
            println!("{json}");
        } else if let Err(error) = std::fs::write(path, json + "\n") {
            eprintln!("device-sim: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A whole-number rate's per-device interval.
pub fn interval(rate: f64, devices: usize) -> Option<Duration> {
    (rate.is_finite() && rate > 0.0).then(|| Duration::from_secs_f64(devices as f64 / rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(parse_broker("[::1]:80"), Ok(("::1".into(), 80)));
        assert!(parse_broker("localhost").is_err());
        assert!(parse_broker(":1").is_err());
        assert!(parse_broker("h:99999").is_err());
    }

    #[test]
    fn rate_becomes_an_interval() {
        assert_eq!(interval(100.0, 10), Some(Duration::from_millis(100)));
        assert_eq!(interval(0.0, 10), None);
    }
}
