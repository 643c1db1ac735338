//! A plain WASI command (exports wasi:cli/run): the host must refuse it as a connector.

fn main() {
    println!("hello from a command, not a connector");
}
