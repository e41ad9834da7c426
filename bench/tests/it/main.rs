//! Integration tests of skiff-bench: the generator's core against an in-process fake
//! RESP server, the binary's outputs and refusals, `--spawn` against real `skiff`
//! processes, and Redis and etcd when they are installed.

mod cli;
mod external;
mod fake;
mod spawn;
mod support;
