//! The `device-sim` binary.

fn main() {
    println!("device-sim: not yet implemented");
}
