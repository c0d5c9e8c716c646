//! Placeholder, replaced by the operator CLI.
fn main() {}
