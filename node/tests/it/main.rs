//! Integration tests for skiff-node, one module per area (one binary keeps the build fast).

mod admin;
