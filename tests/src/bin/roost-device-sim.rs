//! device-sim's own entry point, built inside the test package.

fn main() {
    println!("device-sim: not yet implemented");
}
