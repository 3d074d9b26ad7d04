//! TCP through the reactor: blocking-style reads and writes park only the green thread.

use std::io::{Read, Write};
use weft_sched::{Builder, TcpListener, TcpStream, spawn};

#[test]
fn echo_server_serves_many_clients_on_few_workers() {
    for workers in [1, 2] {
        let rt = Builder::new().workers(workers).build().unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server = rt.spawn(move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let mut connections = Vec::new();
            for _ in 0..20 {
                let (mut stream, _) = listener.accept().unwrap();
                connections.push(spawn(move || {
                    let mut buf = [0u8; 1024];
                    let mut echoed = 0;
                    loop {
                        let n = stream.read(&mut buf).unwrap();
                        if n == 0 {
                            return echoed;
                        }
                        stream.write_all(&buf[..n]).unwrap();
                        echoed += n;
                    }
                }));
            }
            connections
                .into_iter()
                .map(|c| c.join().unwrap())
                .sum::<usize>()
        });
        let addr = addr_rx.recv().unwrap();
        let clients: Vec<_> = (0..20)
            .map(|i| {
                rt.spawn(move || {
                    let stream = TcpStream::connect(addr).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let message = vec![i as u8; 10_000 + i * 100];
                    // Write and read concurrently from two green threads on one socket.
                    let stream = std::sync::Arc::new(stream);
                    let writer = {
                        let (s, m) = (stream.clone(), message.clone());
                        spawn(move || {
                            (&*s).write_all(&m).unwrap();
                            s.shutdown(std::net::Shutdown::Write).unwrap();
                        })
                    };
                    let mut back = Vec::new();
                    (&*stream).read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert_eq!(back, message);
                    back.len()
                })
            })
            .collect();
        let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(server.join().unwrap(), sent);
        assert!(rt.metrics().io_events > 0);
    }
}

#[test]
fn connect_to_a_closed_port_fails_cleanly() {
    let rt = Builder::new().workers(1).build().unwrap();
    let err = rt
        .spawn(|| {
            // Bind then drop, so the port is (very likely) closed.
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            TcpStream::connect(addr).map(|_| ())
        })
        .join()
        .unwrap();
    assert!(err.is_err());
}

#[test]
fn io_types_outside_a_runtime_report_an_error() {
    let err = TcpListener::bind("127.0.0.1:0").unwrap_err();
    assert!(err.to_string().contains("needs a runtime"), "{err}");
}

#[test]
fn a_plain_thread_can_use_the_io_types_inside_enter() {
    let rt = Builder::new().workers(1).build().unwrap();
    let _entered = rt.enter();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = rt.spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"ping").unwrap();
    });
    let (mut conn, _) = listener.accept().unwrap(); // blocks this OS thread
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    client.join().unwrap();
}

#[test]
fn io_on_a_shut_down_runtime_fails_instead_of_hanging() {
    let rt = Builder::new().workers(1).build().unwrap();
    let (listener, client) = {
        let _entered = rt.enter();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, client)
    };
    // Accepted outside any runtime scope: the connection joins the listener's runtime (a
    // regression test: it used to look for a runtime on the accepting thread).
    let (conn, _) = listener.accept().unwrap();
    drop(rt);
    let mut buf = [0u8; 4];
    let err = (&conn).read(&mut buf).unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
    drop(client);
}
