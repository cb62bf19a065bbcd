//! device-sim's own entry point, built inside the test package.

fn main() -> std::process::ExitCode {
    device_sim::cli::main()
}
