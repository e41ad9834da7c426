//! Integration tests of the engine: data-driven interaction scripts, and the seeded
//! simulator.

// Tests read their scripts from disk; the engine's purity lints are for engine code.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod datadriven;
mod garbage;
mod interaction;
mod scripts;
mod sim;
