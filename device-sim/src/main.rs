//! The `device-sim` binary: everything lives in the library, see [`device_sim::cli`].

fn main() -> std::process::ExitCode {
    device_sim::cli::main()
}
