//! hyper serving and requesting HTTP/1.1 on weft-sched through the `hyper` feature's adapters.
#![cfg(feature = "hyper")]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use weft_sched::hyper_rt::HyperTimer;
use weft_sched::{Builder, TcpListener, TcpStream, block_on, spawn};

#[test]
fn hyper_server_and_client_on_green_threads() {
    const REQUESTS: usize = 16;
    let rt = Builder::new().workers(2).build().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = rt.spawn(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let mut connections = Vec::new();
        for _ in 0..REQUESTS {
            let (stream, _) = listener.accept().unwrap();
            connections.push(spawn(move || {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // A handler may block in green-thread style: only this fiber parks.
                        weft_sched::sleep(std::time::Duration::from_millis(1));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "{path}:{}",
                            body.len()
                        )))))
                    });
                block_on(
                    hyper::server::conn::http1::Builder::new()
                        .timer(HyperTimer::current())
                        .serve_connection(stream, service),
                )
            }));
        }
        for c in connections {
            c.join().unwrap().unwrap();
        }
    });
    let addr = addr_rx.recv().unwrap();
    let clients: Vec<_> = (0..REQUESTS)
        .map(|i| {
            rt.spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                let (mut sender, connection) = block_on(hyper::client::conn::http1::handshake::<
                    _,
                    Full<Bytes>,
                >(stream))
                .unwrap();
                let driver = spawn(move || block_on(connection));
                let request = Request::post(format!("/item/{i}"))
                    .header("host", "localhost")
                    .body(Full::new(Bytes::from(vec![b'x'; i * 10])))
                    .unwrap();
                let response = block_on(sender.send_request(request)).unwrap();
                assert_eq!(response.status(), 200);
                let body = block_on(response.into_body().collect()).unwrap().to_bytes();
                drop(sender);
                driver.join().unwrap().unwrap();
                String::from_utf8(body.to_vec()).unwrap()
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap(), format!("/item/{i}:{}", i * 10));
    }
    server.join().unwrap();
}

#[test]
fn hyper_executor_runs_futures_on_green_threads() {
    use hyper::rt::Executor;
    let rt = Builder::new().workers(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let executor = rt.block_on(async { weft_sched::hyper_rt::HyperExecutor::current() });
    for i in 0..10 {
        let tx = tx.clone();
        executor.execute(async move {
            weft_sched::Sleep::new(std::time::Duration::from_millis(1)).await;
            tx.send((i, weft_sched::in_green_thread())).unwrap();
        });
    }
    let mut got: Vec<_> = (0..10).map(|_| rx.recv().unwrap()).collect();
    got.sort();
    assert_eq!(got, (0..10).map(|i| (i, true)).collect::<Vec<_>>());
}
