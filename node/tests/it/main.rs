//! Integration tests of the node: the admin port on fabricated reports, and whole
//! clusters of real `skiff` processes, including the chaos smoke run.

mod admin;
#[cfg(feature = "failpoints")]
mod chaos;
mod cluster;
#[cfg(feature = "failpoints")]
mod failpoints;
mod hostile;
mod local;
mod node;
mod ordering;
mod startup;
mod walfaults;
