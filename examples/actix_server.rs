//! Placeholder: the example server is being written.
fn main() {}
