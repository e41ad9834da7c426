//! Integration tests for skiff-net: one binary, a module per area.

mod live;
mod priority;
mod props;
mod resp_live;
mod support;
