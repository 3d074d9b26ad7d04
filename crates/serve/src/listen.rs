//! Binding the serving socket, optionally shared with other processes (`SO_REUSEPORT`).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

/// A listener on `addr`. With `reuse_port`, other sockets that also set `SO_REUSEPORT` may
/// bind the same address, and the kernel spreads new connections across them: several
/// `weft serve` processes share one port without a balancer in front.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<weft_sched::TcpListener> {
    if !reuse_port {
        return weft_sched::TcpListener::bind(addr);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's bind does, so a restarted process is not refused while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    weft_sched::TcpListener::from_std(socket.into())
}
