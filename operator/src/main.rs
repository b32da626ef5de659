//! `quiver-operator`.
fn main() {}
