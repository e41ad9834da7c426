//! The `skiff` binary (the command line and server start-up come with the node's runtime).

fn main() {}
