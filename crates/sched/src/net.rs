//! TCP on the runtime's reactor. The blocking-style methods (`accept`, `read`, `write`, ...) park
//! only the calling green thread while the socket is not ready; the `poll_*` methods serve async
//! code (and the hyper adapters).

use std::fmt;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use mio::Token;
use mio::event::Source;

use crate::context;
use crate::driver::{Direction, ScheduledIo};
use crate::runtime::Shared;

/// A source registered with a runtime's reactor.
struct Registered<S: Source> {
    source: S,
    shared: Arc<Shared>,
    token: Token,
    io: Arc<ScheduledIo>,
}

impl<S: Source> Registered<S> {
    /// Registers with the current runtime.
    fn new(source: S) -> io::Result<Self> {
        let shared = context::current_shared().ok_or_else(|| {
            io::Error::other(
                "weft-sched I/O needs a runtime: use it from a green thread or inside Runtime::enter",
            )
        })?;
        Registered::on(shared, source)
    }

    fn on(shared: Arc<Shared>, mut source: S) -> io::Result<Self> {
        let (token, io) = shared.io.register(&mut source)?;
        shared.ensure_driver_watch();
        Ok(Registered {
            source,
            shared,
            token,
            io,
        })
    }

    /// Runs a non-blocking operation until it stops returning WouldBlock, waiting for readiness
    /// (and parking the green thread) in between.
    fn blocking<R>(
        &self,
        dir: Direction,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let seen = self.io.snapshot();
            match op(&self.source) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.clear(seen, dir);
                    self.check_running()?;
                    crate::block_on(poll_fn(|cx| self.io.poll_ready(cx, dir)));
                }
                result => return result,
            }
        }
    }

    fn poll_op<R>(
        &self,
        cx: &mut Context<'_>,
        dir: Direction,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            let event = ready!(self.io.poll_ready(cx, dir));
            match op(&self.source) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.clear(event, dir);
                    self.check_running()?;
                }
                result => return Poll::Ready(result),
            }
        }
    }

    /// Nobody polls a shut-down runtime's reactor: waiting on it would never end.
    fn check_running(&self) -> io::Result<()> {
        if self.shared.is_shutdown() {
            return Err(io::Error::other(
                "the weft-sched runtime of this socket has shut down",
            ));
        }
        Ok(())
    }

    fn wait(&self, dir: Direction) {
        crate::block_on(poll_fn(|cx| self.io.poll_ready(cx, dir)));
    }
}

impl<S: Source> Drop for Registered<S> {
    fn drop(&mut self) {
        self.shared.io.deregister(&mut self.source, self.token);
    }
}

/// A TCP listening socket.
pub struct TcpListener {
    inner: Registered<mio::net::TcpListener>,
}

impl TcpListener {
    /// Binds to the first of `addr`'s addresses that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match std::net::TcpListener::bind(addr) {
                Ok(listener) => return TcpListener::from_std(listener),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")
        }))
    }

    /// Adopts a std listener (switched to non-blocking mode).
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            inner: Registered::new(mio::net::TcpListener::from_std(listener))?,
        })
    }

    /// Waits for a connection (parking only the green thread).
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.inner.blocking(Direction::Read, |l| l.accept())?;
        Ok((self.adopt(stream)?, addr))
    }

    /// Accepts a connection if one is ready, else registers `cx`'s waker (for async code).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let (stream, addr) = ready!(self.inner.poll_op(cx, Direction::Read, |l| l.accept()))?;
        Poll::Ready(self.adopt(stream).map(|s| (s, addr)))
    }

    /// Accepted connections belong to the listener's runtime, whichever thread accepts.
    fn adopt(&self, stream: mio::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: Registered::on(self.inner.shared.clone(), stream)?,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.source.local_addr()
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

/// A TCP connection. `Read` and `Write` are implemented for `TcpStream` and `&TcpStream` (one
/// green thread may read while another writes).
pub struct TcpStream {
    inner: Registered<mio::net::TcpStream>,
}

impl TcpStream {
    /// Connects to the first of `addr`'s addresses that accepts (parking only the green thread
    /// while the handshake runs; name resolution itself blocks the OS thread).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_addr(addr) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::from_mio(mio::net::TcpStream::connect(addr)?)?;
        loop {
            stream.inner.wait(Direction::Write);
            if let Some(e) = stream.inner.source.take_error()? {
                return Err(e);
            }
            match stream.inner.source.peer_addr() {
                Ok(_) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    let seen = stream.inner.io.snapshot();
                    stream.inner.io.clear(seen, Direction::Write);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adopts a connected std stream (switched to non-blocking mode).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        TcpStream::from_mio(mio::net::TcpStream::from_std(stream))
    }

    fn from_mio(stream: mio::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: Registered::new(stream)?,
        })
    }

    /// The address of the remote end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.source.peer_addr()
    }

    /// The address of the local end.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.source.local_addr()
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm when true).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.source.set_nodelay(nodelay)
    }

    /// Whether `TCP_NODELAY` is set.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.source.nodelay()
    }

    /// Shuts down the read half, the write half, or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.source.shutdown(how)
    }

    /// Parks the green thread until the socket is readable (or closed).
    pub fn readable(&self) {
        self.inner.wait(Direction::Read);
    }

    /// Parks the green thread until the socket is writable (or closed).
    pub fn writable(&self) {
        self.inner.wait(Direction::Write);
    }

    /// Reads if data (or end of stream) is ready, else registers `cx`'s waker (for async code).
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.inner.poll_op(cx, Direction::Read, |mut s| s.read(buf))
    }

    /// Writes if the socket has room, else registers `cx`'s waker (for async code).
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner
            .poll_op(cx, Direction::Write, |mut s| s.write(buf))
    }

    /// Like [`poll_write`](TcpStream::poll_write), from several buffers in one system call.
    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner
            .poll_op(cx, Direction::Write, |mut s| s.write_vectored(bufs))
    }

    fn read_blocking(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.blocking(Direction::Read, |mut s| s.read(buf))
    }

    fn write_blocking(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.blocking(Direction::Write, |mut s| s.write(buf))
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_blocking(buf)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_blocking(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_blocking(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner
            .blocking(Direction::Write, |mut s| s.write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_blocking(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local_addr", &self.local_addr().ok())
            .field("peer_addr", &self.peer_addr().ok())
            .finish()
    }
}
