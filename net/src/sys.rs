//! Socket plumbing that glommio 0.9 does not offer: an exclusive listener bind, socket
//! options through `socket2`, a real vectored `sendmsg`, and `recv` into a buffer's
//! uninitialised spare capacity. Readiness waits still go through glommio's reactor.
//!
//! glommio's `TcpStream::write_vectored` writes only the first slice, and its
//! `TcpListener::bind` sets SO_REUSEPORT (two misconfigured processes would silently
//! share a port) and panics on a malformed address; see `RUNTIME-NOTES.md`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::message::OutFrame;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Most slices one `sendmsg` takes (Linux `UIO_MAXIOV`); longer gather lists are
/// written in several calls.
pub const IOV_MAX: usize = 1024;
/// Listen backlog for the peer port: a cluster has few peers, but a restart storm of
/// many shards may dial at once.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Idle time before TCP keepalive probes start on a peer connection: detects a peer
/// whose host vanished without a RST while no message needs sending.
pub const KEEPALIVE_IDLE_SECS: u64 = 10;

/// Socket buffer sizes applied to every peer connection (`None`: the kernel's default
/// and its autotuning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    pub send_buffer_bytes: Option<usize>,
    pub recv_buffer_bytes: Option<usize>,
}

/// Binds an exclusive (no SO_REUSEPORT) listening socket on `addr`.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets a restarted node rebind over TIME_WAIT connections; it
    // does not let a second listener share the port.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn sock_ref<'a>(fd: &'a BorrowedFd<'a>) -> SockRef<'a> {
    SockRef::from(fd)
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: callers pass the fd of a stream they hold for the duration of the call;
    // the borrow never outlives that call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// TCP_NODELAY (a heartbeat must not wait for Nagle), keepalive, and buffer sizes.
pub fn configure(stream: &TcpStream, opts: &SocketOptions) -> io::Result<()> {
    let fd = borrow(stream.as_raw_fd());
    let sock = sock_ref(&fd);
    sock.set_nodelay(true)?;
    sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(std::time::Duration::from_secs(KEEPALIVE_IDLE_SECS)))?;
    if let Some(n) = opts.send_buffer_bytes {
        sock.set_send_buffer_size(n)?;
    }
    if let Some(n) = opts.recv_buffer_bytes {
        sock.set_recv_buffer_size(n)?;
    }
    Ok(())
}

/// Reads what the socket has into `buf`'s spare capacity without waiting; `Ok(0)` is
/// end of stream. The caller makes sure there is spare capacity.
fn recv_now(fd: RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let fd = borrow(fd);
    let n = sock_ref(&fd).recv_with_flags(buf.spare_capacity_mut(), libc::MSG_DONTWAIT)?;
    // SAFETY: recv initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Reads at least one byte into `buf`'s spare capacity (which the caller has made
/// room for), waiting for readability through glommio. `Ok(0)` is end of stream.
///
/// # Panics
/// If `buf` has no spare capacity.
pub async fn read_into(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    assert!(buf.capacity() > buf.len(), "read_into needs spare capacity");
    loop {
        match recv_now(stream.as_raw_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A peek of one byte completes when data (or end of stream) is there;
                // the data stays in the socket for `recv_now` to take.
                let mut probe = [0u8; 1];
                stream.peek(&mut probe).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reusable gather storage for [`write_frames`]: raw iovecs carry no lifetime, so a
/// writer keeps one of these across batches instead of allocating per write.
#[derive(Default)]
pub struct GatherBuf {
    /// One iovec per non-empty head or payload of the batch, in order.
    flat: Vec<libc::iovec>,
    /// What one `sendmsg` takes: `flat` from the cursor on, neighbours merged.
    merged: Vec<libc::iovec>,
}

impl std::fmt::Debug for GatherBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatherBuf").field("flat", &self.flat.len()).field("merged", &self.merged.len()).finish()
    }
}

fn iovec(s: &[u8]) -> libc::iovec {
    libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() }
}

/// Fills `out` with `flat[idx..]` (the first one `offset` bytes in), merging neighbours
/// that are adjacent in memory (entry payloads cut from one buffer are), up to
/// [`IOV_MAX`] entries. Merged ranges only ever go to the kernel: no Rust slice spans
/// two of the original slices.
fn merge(flat: &[libc::iovec], idx: usize, offset: usize, out: &mut Vec<libc::iovec>) {
    out.clear();
    let first = libc::iovec {
        iov_base: (flat[idx].iov_base as usize + offset) as *mut libc::c_void,
        iov_len: flat[idx].iov_len - offset,
    };
    for v in std::iter::once(first).chain(flat[idx + 1..].iter().copied()) {
        if let Some(last) = out.last_mut() {
            if (last.iov_base as usize).wrapping_add(last.iov_len) == v.iov_base as usize {
                last.iov_len += v.iov_len;
                continue;
            }
            if out.len() == IOV_MAX {
                break;
            }
        }
        out.push(v);
    }
}

/// One non-blocking `sendmsg` of `iov`.
fn sendmsg_now(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // MSG_NOSIGNAL: a peer that went away is an error return, not SIGPIPE.
    // SAFETY: every iovec points into memory the caller keeps borrowed for this call,
    // and the kernel only reads from it.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Writes every frame of `frames` (heads and payloads) with as few `sendmsg` calls as
/// the kernel allows, waiting for writability through glommio when the socket buffer
/// is full.
pub async fn write_frames(stream: &mut TcpStream, frames: &[OutFrame], buf: &mut GatherBuf) -> io::Result<()> {
    buf.flat.clear();
    for f in frames {
        for s in std::iter::once(&f.head).chain(f.payloads.iter()) {
            if !s.is_empty() {
                buf.flat.push(iovec(s));
            }
        }
    }
    let mut idx = 0; // first iovec not yet fully written
    let mut offset = 0; // bytes of flat[idx] already written
    while idx < buf.flat.len() {
        merge(&buf.flat, idx, offset, &mut buf.merged);
        let mut n = match sendmsg_now(stream.as_raw_fd(), &buf.merged) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let v = buf.flat[idx];
                // SAFETY: `v` was made above from one head or payload of `frames`,
                // which stays borrowed (and so alive and unchanged) for this whole call.
                let current = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                // glommio's write waits for writability, then sends part of one slice.
                stream.write(&current[offset..]).await?
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped accepting bytes"));
        }
        while n > 0 {
            let left = buf.flat[idx].iov_len - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_adjacent_slices_and_caps_the_count() {
        let block = vec![7u8; 4096];
        let (a, b) = block.split_at(100);
        let other = vec![1u8; 10];
        let flat = [iovec(&a[..50]), iovec(&a[50..]), iovec(b), iovec(&other)];
        let mut out = Vec::new();
        merge(&flat, 0, 10, &mut out);
        let lens: Vec<usize> = out.iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [4086, 10], "three adjacent slices become one iovec");
        assert_eq!(out[0].iov_base as usize, block.as_ptr() as usize + 10);
        // Slices with a one-byte gap between them cannot merge.
        let spaced = vec![0u8; 4 * (IOV_MAX + 5)];
        let flat: Vec<libc::iovec> = spaced.chunks(4).map(|c| iovec(&c[..3])).collect();
        merge(&flat, 0, 0, &mut out);
        assert_eq!(out.len(), IOV_MAX);
    }
}
