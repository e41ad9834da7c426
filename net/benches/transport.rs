//! Loopback benchmark of the peer transport against raw TCP, side by side in one run.
//!
//! For each batch size (1, 64, 1,024 entries of 100 bytes per append):
//! - raw: the same payload bytes written with plain `write_all` calls of one message's
//!   payload each and read into a reused buffer: the physical limit here;
//! - skiff: append messages through two `Transport`s (one per executor, one per CPU,
//!   as two shards of two nodes would run). The entries' payloads are 100-byte slices
//!   of one buffer, as entries read back from a WAL segment or relayed from a received
//!   append are; the messages are built before the clock starts (that is the engine's
//!   work), and the clock covers encoding, queueing, writing, reading, checksumming and
//!   decoding.
//!
//! It prints messages/s, entries/s, MB/s of payload and one-message round-trip p50/p99
//! for both, `net_vs_raw_ratio=X` (payload bytes/s of skiff over raw at the 1,024
//! batch), the heap allocations the receiving thread makes per received append,
//! counted by a global allocator, and the CPU time the sending and receiving threads
//! spend per 100 MB of payload. Run with `cargo bench -p skiff-net`.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use skiff_engine::{Entry, EntryKind, Message, MessageBody};
use skiff_net::sys::{SocketOptions, bind_listener, configure};
use skiff_net::{Inbound, Lane, Transport, TransportConfig};

/// Counts allocations made by threads that opted in, so the receiving executor's
/// allocations can be attributed to the messages it received. Allocates with mimalloc,
/// the allocator the `skiff` binary runs on.
struct CountingAllocator;

static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: allocations during thread teardown must not touch dead TLS.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as ours.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as ours.
        unsafe { INNER.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as ours.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn count_allocations(on: bool) -> u64 {
    COUNTING.with(|c| c.set(on));
    ALLOCATIONS.with(|n| n.replace(0))
}

/// CPU time this thread has used (user + system), from `getrusage(RUSAGE_THREAD)`:
/// less sensitive than wall time to other load on a shared machine.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write into.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

const ENTRY_PAYLOAD_BYTES: usize = 100;
const BATCHES: [usize; 3] = [1, 64, 1024];
/// Entries per throughput run: enough for a few hundred milliseconds per case.
const ENTRIES_PER_RUN: [usize; 3] = [200_000, 2_000_000, 2_000_000];
/// Round trips measured per case.
const ROUND_TRIPS: usize = 2_000;
/// Reply size in the raw ping-pong: about an encoded AppendResponse frame.
const RAW_REPLY_BYTES: usize = 69;
/// Raw receiver's read buffer, as the transport's receive buffer.
const RAW_READ_BYTES: usize = 256 << 10;
/// CPUs for sender and receiver: one shard each, as on two nodes.
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;

#[derive(Debug, Default, Clone)]
struct Figures {
    seconds: f64,
    messages: usize,
    entries: usize,
    payload_bytes: usize,
    rtt_us: Vec<f64>,
    allocations_per_message: Option<f64>,
    /// CPU time of the sending and the receiving thread during the throughput phase.
    send_cpu: Duration,
    recv_cpu: Duration,
}

impl Figures {
    fn mb_per_s(&self) -> f64 {
        self.payload_bytes as f64 / self.seconds / 1e6
    }
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.rtt_us.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
    fn print(&self, name: &str, batch: usize) {
        println!(
            "{name:<5} batch={batch:<5} msgs/s={:>10.0} entries/s={:>11.0} MB/s={:>8.1} rtt_p50_us={:>7.1} rtt_p99_us={:>7.1}{}",
            self.messages as f64 / self.seconds,
            self.entries as f64 / self.seconds,
            self.mb_per_s(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.allocations_per_message
                .map(|a| format!(" recv_allocs_per_msg={a:.3} recv_allocs_per_entry={:.5}", a / batch as f64))
                .unwrap_or_default(),
        );
        let mb = self.payload_bytes as f64 / 1e6;
        println!(
            "      cpu_ms_per_100MB send={:.1} recv={:.1}",
            self.send_cpu.as_secs_f64() * 1e3 / mb * 100.0,
            self.recv_cpu.as_secs_f64() * 1e3 / mb * 100.0,
        );
    }
}

fn executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    cpu: usize,
    name: &str,
    body: impl FnOnce() -> F + Send + 'static,
) -> glommio::ExecutorJoinHandle<T> {
    let placement = if glommio::CpuSet::online().map(|s| s.len()).unwrap_or(1) > cpu {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    };
    LocalExecutorBuilder::new(placement).name(name).spawn(body).expect("executor starts")
}

fn sockets() -> SocketOptions {
    SocketOptions::default()
}

// ---------------------------------------------------------------- raw TCP

fn raw(batch: usize, entries: usize) -> Figures {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let msg_bytes = batch * ENTRY_PAYLOAD_BYTES;
    let messages = entries / batch;
    let total = messages * msg_bytes;
    let receiver = executor(RECEIVER_CPU, "raw-recv", move || async move {
        // SAFETY: a bound, listening socket handed over whole.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let mut s = listener.accept().await.unwrap();
        configure(&s, &sockets()).unwrap();
        let mut buf = vec![0u8; RAW_READ_BYTES];
        let mut got = 0;
        let cpu0 = thread_cpu();
        while got < total {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "sender closed early");
            got += n;
        }
        let end = Instant::now();
        let cpu = thread_cpu() - cpu0;
        s.write_all(&[1]).await.unwrap();
        let reply = [0u8; RAW_REPLY_BYTES];
        for _ in 0..ROUND_TRIPS {
            s.read_exact(&mut buf[..msg_bytes]).await.unwrap();
            s.write_all(&reply).await.unwrap();
        }
        (end, cpu)
    });
    let sender = executor(SENDER_CPU, "raw-send", move || async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        configure(&s, &sockets()).unwrap();
        let payload = vec![7u8; msg_bytes];
        let start = Instant::now();
        let cpu0 = thread_cpu();
        for _ in 0..messages {
            s.write_all(&payload).await.unwrap();
        }
        let mut done = [0u8; 1];
        s.read_exact(&mut done).await.unwrap();
        let cpu = thread_cpu() - cpu0;
        let mut reply = [0u8; RAW_REPLY_BYTES];
        let mut rtt = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let t = Instant::now();
            s.write_all(&payload).await.unwrap();
            s.read_exact(&mut reply).await.unwrap();
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
        (start, rtt, cpu)
    });
    let (start, rtt_us, send_cpu) = sender.join().unwrap();
    let (end, recv_cpu) = receiver.join().unwrap();
    Figures {
        seconds: (end - start).as_secs_f64(),
        messages,
        entries: messages * batch,
        payload_bytes: total,
        rtt_us,
        allocations_per_message: None,
        send_cpu,
        recv_cpu,
    }
}

// ---------------------------------------------------------------- skiff

const SENDER: u64 = 1;
const RECEIVER: u64 = 2;
/// `commit` value marking a round-trip probe, answered at once.
const PROBE: u64 = 1;

fn config(node: u64, peer: u64, addr: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(0xbe9c, node, 0, vec![(peer, addr)]);
    c.socket = sockets();
    c
}

fn append(index: u64, commit: u64, entries: &[Entry]) -> Message {
    Message {
        from: SENDER,
        to: RECEIVER,
        term: 1,
        body: MessageBody::Append { prev_index: index, prev_term: 1, commit, entries: entries.to_vec() },
    }
}

fn reply(index: u64) -> Message {
    Message {
        from: RECEIVER,
        to: SENDER,
        term: 1,
        body: MessageBody::AppendResponse { index, reject: false, hint_index: 0, hint_term: 0 },
    }
}

async fn next(t: &Transport) -> Inbound {
    loop {
        if let Some(m) = t.try_recv() {
            return m;
        }
        t.readable().await;
    }
}

fn skiff(batch: usize, entries: usize) -> Figures {
    let (l_send, l_recv) = (
        bind_listener("127.0.0.1:0".parse().unwrap()).unwrap(),
        bind_listener("127.0.0.1:0".parse().unwrap()).unwrap(),
    );
    let (a_send, a_recv) = (l_send.local_addr().unwrap(), l_recv.local_addr().unwrap());
    let messages = entries / batch;
    let total_entries = messages * batch;
    let receiver = executor(RECEIVER_CPU, "skiff-recv", move || async move {
        let t = Transport::start(config(RECEIVER, SENDER, a_send), l_recv).unwrap();
        t.connected(SENDER).await;
        // Count from the moment the sender's connection is up: frames are decoded as
        // they arrive, possibly before this loop sees the first one.
        while t.inbound_connections() == 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        count_allocations(true);
        let cpu0 = thread_cpu();
        let mut cpu = Duration::ZERO;
        let mut inbox = Vec::with_capacity(1024);
        let mut received_entries = 0usize;
        let mut received_messages = 0usize;
        let mut allocations = 0u64;
        let mut end = None;
        loop {
            t.readable().await;
            t.recv_batch(&mut inbox, 1024);
            for m in inbox.drain(..) {
                let Inbound::Raft(m) = m else { unreachable!("no app frames sent") };
                match m.body {
                    MessageBody::Append { entries, commit, prev_index, .. } => {
                        if commit == PROBE {
                            t.send(reply(prev_index)).unwrap();
                            continue;
                        }
                        received_messages += 1;
                        received_entries += entries.len();
                        debug_assert!(entries.iter().all(|e| e.data.len() == ENTRY_PAYLOAD_BYTES));
                        drop(entries);
                        if received_entries == total_entries {
                            allocations = count_allocations(false);
                            end = Some(Instant::now());
                            cpu = thread_cpu() - cpu0;
                            t.send(reply(u64::MAX)).unwrap();
                        }
                    }
                    MessageBody::TimeoutNow => {
                        let per_msg = allocations as f64 / received_messages as f64;
                        return (end.expect("all entries arrived"), per_msg, cpu);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    });
    let sender = executor(SENDER_CPU, "skiff-send", move || async move {
        let t = Transport::start(config(SENDER, RECEIVER, a_recv), l_send).unwrap();
        t.connected(RECEIVER).await;
        let block = Bytes::from(vec![7u8; batch * ENTRY_PAYLOAD_BYTES]);
        let pool: Vec<Entry> = (0..batch)
            .map(|i| Entry {
                term: 1,
                index: i as u64,
                kind: EntryKind::Normal,
                data: block.slice(i * ENTRY_PAYLOAD_BYTES..(i + 1) * ENTRY_PAYLOAD_BYTES),
            })
            .collect();
        let wire_bytes = batch * (ENTRY_PAYLOAD_BYTES + 21) + 64;
        // Building the messages (cloning entries out of the log) is the engine's work,
        // not the transport's: it happens before the clock starts.
        let outgoing: Vec<Message> = (0..messages).map(|m| append((m * batch) as u64, 0, &pool)).collect();
        let start = Instant::now();
        let cpu0 = thread_cpu();
        for msg in outgoing {
            // A producer that may wait: the Raft loop itself would drop instead.
            t.send_capacity(RECEIVER, Lane::Bulk, wire_bytes).await;
            t.send(msg).unwrap();
        }
        match next(&t).await {
            Inbound::Raft(Message { body: MessageBody::AppendResponse { index: u64::MAX, .. }, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let cpu = thread_cpu() - cpu0;
        let mut rtt = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS {
            let t0 = Instant::now();
            t.send(append(i as u64, PROBE, &pool)).unwrap();
            match next(&t).await {
                Inbound::Raft(Message { body: MessageBody::AppendResponse { index, .. }, .. }) => {
                    assert_eq!(index, i as u64)
                }
                other => panic!("unexpected {other:?}"),
            }
            rtt.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        t.send(Message { from: SENDER, to: RECEIVER, term: 1, body: MessageBody::TimeoutNow }).unwrap();
        // Keep the connection up until the receiver has what it needs to stop.
        while t.queued(RECEIVER, Lane::Control).0 > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
        (start, rtt, cpu)
    });
    let (start, rtt_us, send_cpu) = sender.join().unwrap();
    let (end, per_msg, recv_cpu) = receiver.join().unwrap();
    Figures {
        seconds: (end - start).as_secs_f64(),
        messages,
        entries: total_entries,
        payload_bytes: total_entries * ENTRY_PAYLOAD_BYTES,
        rtt_us,
        allocations_per_message: Some(per_msg),
        send_cpu,
        recv_cpu,
    }
}

/// Rounds per case, alternating raw and skiff so both meet the same conditions. The
/// median round of each side is reported, and the ratio is the median of the per-round
/// ratios: the raw loop is bimodal here even on an idle machine (most rounds 2-3 GB/s
/// at the 1,024 batch, some 7-9 GB/s), so its fastest round says more about the
/// scheduler than about the link.
const ROUNDS: usize = 7;

fn median(mut runs: Vec<Figures>) -> Figures {
    runs.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    runs.swap_remove(runs.len() / 2)
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "skiff-net loopback benchmark: {} CPUs online, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "entry payload {ENTRY_PAYLOAD_BYTES} B; sender on CPU {SENDER_CPU}, receiver on CPU {RECEIVER_CPU}; MB = 10^6 bytes of entry payload"
    );
    // `SKIFF_NET_BENCH_BATCHES=1024` runs only the listed batch sizes (for profiling).
    let only: Option<Vec<usize>> = std::env::var("SKIFF_NET_BENCH_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect());
    let mut ratio = None;
    for (batch, entries) in BATCHES.into_iter().zip(ENTRIES_PER_RUN) {
        if only.as_ref().is_some_and(|o| !o.contains(&batch)) {
            continue;
        }
        // Alternate the two so that load from elsewhere on the machine hits both alike
        // (see `ROUNDS`).
        let mut raws = Vec::new();
        let mut skiffs = Vec::new();
        for _ in 0..ROUNDS {
            raws.push(raw(batch, entries));
            skiffs.push(skiff(batch, entries));
        }
        let rounds = |v: &[Figures]| v.iter().map(|f| format!("{:.0}", f.mb_per_s())).collect::<Vec<_>>().join(",");
        println!("rounds batch={batch}: raw MB/s [{}]  skiff MB/s [{}]", rounds(&raws), rounds(&skiffs));
        let x = median_f64(raws.iter().zip(&skiffs).map(|(r, s)| s.mb_per_s() / r.mb_per_s()).collect());
        let r = median(raws);
        let s = median(skiffs);
        r.print("raw", batch);
        s.print("skiff", batch);
        println!("ratio batch={batch} skiff/raw bytes/s = {x:.3} (median of per-round ratios)");
        if batch == 1024 {
            ratio = Some(x);
        }
    }
    if let Some(x) = ratio {
        println!("net_vs_raw_ratio={x:.3}");
    }
}
