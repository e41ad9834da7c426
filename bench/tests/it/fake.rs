//! The generator's core against an in-process fake RESP server: it sends exactly what
//! it counts, classifies every failure by kind and goes on, pipelines as deep as asked
//! and no deeper, and in the open loop charges a server stall to every request that
//! was due during it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skiff_bench::run::{ProgressMode, RunLength, RunResult, run};
use skiff_bench::stats::kind;

use crate::support::{Action, FakeServer, config};

fn go(cfg: &skiff_bench::run::RunConfig) -> RunResult {
    run(cfg, &[], &AtomicBool::new(false), ProgressMode::Off, "").expect("the run completes")
}

#[test]
fn every_request_sent_is_counted_once() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 1000);
    cfg.clients = 4;
    cfg.pipeline = 5;
    cfg.read_ratio = 0.5;
    let r = go(&cfg);
    assert_eq!(server.requests(), 1000, "exactly the budget is sent");
    assert_eq!(r.recorder.ops(), 1000);
    assert_eq!(r.recorder.errors.total(), 0);
    assert_eq!(r.recorder.reads, server.seen.gets.load(Ordering::Relaxed));
    assert_eq!(r.recorder.writes, server.seen.sets.load(Ordering::Relaxed));
    assert!(r.recorder.reads > 0 && r.recorder.writes > 0);
    assert_eq!(r.recorder.latency.len(), 1000, "one latency per successful request");
    // One per client, and the reachability check's before the run.
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 4 + 1);
}

#[test]
fn error_replies_are_counted_by_kind_and_kept_out_of_the_throughput() {
    // Request i gets: i%10 == 0 TRYAGAIN, 1 ERR, 2 OVERLOADED, 3 a wrong type, 4 an
    // error with no code; the rest succeed.
    let server = FakeServer::start(|i, _| match i % 10 {
        0 => Action::Raw(b"-TRYAGAIN no leader is known\r\n"),
        1 => Action::Raw(b"-ERR bad input\r\n"),
        2 => Action::Raw(b"-OVERLOADED too many pending proposals\r\n"),
        3 => Action::Raw(b":1\r\n"),
        4 => Action::Raw(b"-something odd\r\n"),
        _ => Action::Answer,
    });
    let mut cfg = config(server.addr, 500);
    cfg.pipeline = 4;
    let r = go(&cfg);
    let e = &r.recorder.errors;
    assert_eq!(
        (e.get("TRYAGAIN"), e.get("ERR"), e.get("OVERLOADED"), e.get(kind::UNEXPECTED), e.get(kind::ERROR)),
        (50, 50, 50, 50, 50)
    );
    assert_eq!(r.recorder.ops(), 250);
    assert_eq!(r.recorder.latency.len(), 250, "no latency is recorded for a failed request");
    assert_eq!(server.requests(), 500);
}

#[test]
fn a_timeout_fails_what_is_in_flight_and_the_run_goes_on() {
    // The 10th request is never answered: it times out, the connection is replaced,
    // and the remaining requests succeed on the new one.
    let server = FakeServer::start(|i, _| if i == 9 { Action::Hang } else { Action::Answer });
    let mut cfg = config(server.addr, 50);
    cfg.timeout = Duration::from_millis(300);
    let r = go(&cfg);
    assert_eq!(r.recorder.errors.get(kind::TIMEOUT), 1);
    assert_eq!(r.recorder.errors.total(), 1);
    assert_eq!(r.recorder.ops(), 49);
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 1 + 2, "the check, then reconnected once");
}

#[test]
fn a_dropped_connection_fails_its_batch_and_is_reopened() {
    // The server closes the connection on request 20, in the middle of a batch of 4
    // (requests 20..24): all four are lost, counted as `connection` errors.
    let server = FakeServer::start(|i, _| if i == 20 { Action::Close } else { Action::Answer });
    let mut cfg = config(server.addr, 100);
    cfg.pipeline = 4;
    let r = go(&cfg);
    assert_eq!(r.recorder.errors.get(kind::CONNECTION), 4, "{:?}", r.recorder.errors);
    assert_eq!(r.recorder.ops(), 96);
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 1 + 2, "the check, then reconnected once");
}

#[test]
fn an_unreadable_reply_is_a_protocol_error() {
    let server = FakeServer::start(|i, _| if i == 5 { Action::Raw(b"?what\r\n") } else { Action::Answer });
    let r = go(&config(server.addr, 20));
    assert_eq!(r.recorder.errors.get(kind::PROTOCOL), 1);
    assert_eq!(r.recorder.ops(), 19);
}

#[test]
fn pipelining_sends_batches_of_the_configured_depth() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 800);
    cfg.pipeline = 8;
    let r = go(&cfg);
    assert_eq!(r.recorder.ops(), 800);
    // One write per batch: the server reads whole batches, never more than one.
    assert_eq!(server.seen.max_batch.load(Ordering::Relaxed), 8);

    let server = FakeServer::start(|_, _| Action::Answer);
    let r = go(&config(server.addr, 200));
    assert_eq!(r.recorder.ops(), 200);
    assert_eq!(server.seen.max_batch.load(Ordering::Relaxed), 1, "pipeline 1 sends one at a time");
}

/// Requests with a latency of at least `ms` milliseconds.
fn at_least_ms(r: &RunResult, ms: u64) -> u64 {
    r.recorder.latency.count_between(ms * 1000, u64::MAX / 2)
}

#[test]
fn open_loop_charges_a_stall_to_every_request_due_during_it() {
    // 200 requests/s on one connection: one every 5 ms. The server holds request 40's
    // answer for 100 ms. About 20 requests fall due meanwhile; measured from their
    // intended send times, the first half of them waited 50 ms or more.
    const STALL: Duration = Duration::from_millis(100);
    let server = FakeServer::start(|i, _| if i == 40 { Action::StallThenAnswer(STALL) } else { Action::Answer });
    let mut cfg = config(server.addr, 100);
    cfg.rate = Some(200.0);
    let open = go(&cfg);
    assert_eq!(open.recorder.ops(), 100);
    assert!(open.recorder.latency.max() >= 100_000, "the stalled request itself");
    let slow = at_least_ms(&open, 50);
    assert!(slow >= 8, "requests due during the stall must show it: {slow} took 50 ms or more");

    // The same stall in a closed loop is charged to the one request that hit it: the
    // requests that would have been due were simply not sent (coordinated omission).
    let server = FakeServer::start(|i, _| if i == 40 { Action::StallThenAnswer(STALL) } else { Action::Answer });
    let closed = go(&config(server.addr, 100));
    assert!(closed.recorder.latency.max() >= 100_000);
    assert!(at_least_ms(&closed, 50) < slow, "the closed loop hides what the open loop shows");
}

#[test]
fn open_loop_keeps_to_its_budget_and_window() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 300);
    cfg.clients = 3;
    cfg.pipeline = 4;
    cfg.rate = Some(3000.0);
    let r = go(&cfg);
    assert_eq!(server.requests(), 300);
    assert_eq!(r.recorder.ops(), 300, "{:?} unmeasured {}", r.recorder.errors, r.recorder.unmeasured);
    assert!(server.seen.max_batch.load(Ordering::Relaxed) <= 4, "never more in flight than the window");
}

#[test]
fn warm_up_requests_are_sent_but_not_reported() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 1);
    cfg.length = RunLength::Duration(Duration::from_millis(300));
    cfg.warmup = Duration::from_millis(300);
    let r = go(&cfg);
    let reported = r.recorder.ops() + r.recorder.errors.total();
    assert!(reported > 0);
    assert!(
        server.requests() > reported,
        "warm-up traffic is excluded: {} sent, {reported} reported",
        server.requests()
    );
}

#[test]
fn an_interrupt_ends_the_run_with_what_was_measured() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 1);
    cfg.length = RunLength::Duration(Duration::from_secs(3600));
    let interrupt = std::sync::Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, Ordering::Relaxed);
    });
    let r = run(&cfg, &[], &interrupt, ProgressMode::Off, "").unwrap();
    t.join().unwrap();
    assert!(r.interrupted);
    assert!(r.recorder.ops() > 0);
}

#[test]
fn zipf_keys_and_threads_work_together() {
    let server = FakeServer::start(|_, _| Action::Answer);
    let mut cfg = config(server.addr, 600);
    cfg.clients = 4;
    cfg.threads = 2;
    cfg.key_distribution = skiff_bench::workload::KeyDistribution::Zipf(0.99);
    let r = go(&cfg);
    assert_eq!(r.recorder.ops(), 600);
    assert_eq!(server.requests(), 600);
}

#[test]
fn open_loop_counts_requests_due_while_disconnected_as_errors() {
    // The server drops the connection at request 30. The request in flight is lost,
    // and so is every request that falls due before the connection is back: each is
    // counted once, as a `connection` error, and none in the throughput.
    let server = FakeServer::start(|i, _| if i == 30 { Action::Close } else { Action::Answer });
    let mut cfg = config(server.addr, 200);
    cfg.rate = Some(500.0);
    let r = go(&cfg);
    let lost = r.recorder.errors.get(kind::CONNECTION);
    assert!(lost >= 1, "{:?}", r.recorder.errors);
    assert_eq!(r.recorder.ops() + lost, 200);
    assert_eq!(r.recorder.latency.len(), r.recorder.ops());
}

#[test]
fn open_loop_reports_the_backlog_a_slow_server_leaves() {
    // 1,000 requests/s due on one connection, a server that takes 20 ms per answer:
    // most requests are still waiting to be sent when the run ends. They have no
    // latency to report, but they are counted, not dropped in silence.
    let server = FakeServer::start(|_, _| Action::StallThenAnswer(Duration::from_millis(20)));
    let mut cfg = config(server.addr, 1);
    cfg.length = RunLength::Duration(Duration::from_millis(500));
    cfg.rate = Some(1000.0);
    let r = go(&cfg);
    assert!(r.recorder.ops() > 0);
    assert!(r.recorder.unsent > r.recorder.ops(), "{} unsent, {} answered", r.recorder.unsent, r.recorder.ops());
}
