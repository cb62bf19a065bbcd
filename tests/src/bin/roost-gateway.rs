//! The gateway's own entry point, built inside the test package.

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
