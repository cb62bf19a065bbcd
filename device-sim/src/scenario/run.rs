//! `device-sim run`: connected devices in a closed loop with think time (`--inflight`,
//! `--interval`), or sleepy devices (`--wake-every`), every reply verified.

use std::process::ExitCode;

use crate::cli::RunArgs;
use crate::device::{Pacing, Sleepy};

/// Runs the `run` scenario.
pub async fn run(args: RunArgs) -> ExitCode {
    let pacing = Pacing::Closed {
        inflight: args.inflight.max(1),
        think: args.interval,
    };
    if args.wake_every.is_some() && !(0.0..=1.0).contains(&args.jitter) {
        return super::usage("--jitter must be between 0 and 1");
    }
    let sleepy = args.wake_every.map(|wake_every| Sleepy {
        wake_every,
        listen: args.listen,
        jitter: args.jitter,
        telemetry_every: args.telemetry_every,
    });
    let (config, plan) = match super::fleet_config(&args.fleet, pacing, sleepy) {
        Ok(ok) => ok,
        Err(message) => return super::usage(message),
    };
    let mode = if sleepy.is_some() { "sleepy" } else { "closed" };
    let settings = super::settings("run", mode, &args.fleet, pacing, None);
    super::execute(config, plan, settings, &args.fleet).await
}
