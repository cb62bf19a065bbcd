//! The `gateway` binary: see [`gateway::cli`].

/// mimalloc, not the system's allocator: glibc's gives the memory of a model run's large
/// intermediate tensors back to the kernel and faults it in again at the next run, in some
/// processes and not others (docs/BENCHMARKS.md, "Bring your own model").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
