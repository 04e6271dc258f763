//! A plain WASI command: a valid component that is not a runner stage.
fn main() {
    println!("I am a command, not a stage");
}
