//! `device-sim load`: open loop at a fixed offered `--rate` (spread evenly over the devices,
//! latency from each request's scheduled time), or `--closed` with `--inflight` outstanding per
//! device. Replies are verified exactly as in `run`.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::LoadArgs;
use crate::device::Pacing;

/// Runs the `load` scenario.
pub async fn run(args: LoadArgs) -> ExitCode {
    let inflight = args.inflight.max(1);
    let (pacing, mode) = match args.rate {
        Some(rate) => match super::interval(rate, args.fleet.devices.max(1)) {
            Some(interval) => (Pacing::Open { interval, inflight }, "open"),
            None => return super::usage("--rate must be a positive number"),
        },
        None => (
            Pacing::Closed {
                inflight,
                think: Duration::ZERO,
            },
            "closed",
        ),
    };
    let (config, plan) = match super::fleet_config(&args.fleet, pacing, None) {
        Ok(ok) => ok,
        Err(message) => return super::usage(message),
    };
    let settings = super::settings("load", mode, &args.fleet, pacing, args.rate);
    super::execute(config, plan, settings, &args.fleet).await
}
