//! Connection limits: a flood of idle and slow sockets on both ports (far past the connection
//! cap) neither stops the server accepting nor keeps good requests out for longer than the
//! handshake and header timeouts, and every socket it held is given back.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, samples};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Whether the server closed `socket` (end of file or reset) within `wait`.
async fn closed_by_server(socket: &mut TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 256];
    loop {
        match tokio::time::timeout(wait, socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_past_the_cap_do_not_stop_good_requests() {
    let server = TestServer::start(&[
        "--max-connections=32",
        "--handshake-timeout=1s",
        "--header-read-timeout=1s",
    ])
    .await;
    let before = open_fds();
    let mut sockets = Vec::new();
    for _ in 0..300 {
        sockets.push(TcpStream::connect(server.server.http_addr).await.unwrap());
        sockets.push(TcpStream::connect(server.server.grpc_addr).await.unwrap());
    }
    for _ in 0..20 {
        let mut slow = TcpStream::connect(server.server.http_addr).await.unwrap();
        let _ = slow
            .write_all(b"POST /v1/inspections HTTP/1.1\r\nHost: kensa\r\n")
            .await;
        sockets.push(slow);
    }

    // A good client retrying as a station would gets through once the timeouts clear the flood.
    let started = Instant::now();
    let sample = &samples()[0];
    loop {
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(sample.image.clone()).file_name("u.png"),
            )
            .text("station_id", "aoi-07");
        let answer = reqwest::Client::new()
            .post(server.url("/v1/inspections"))
            .multipart(form)
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no good request got through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let through_after = started.elapsed();

    let mut open = Vec::new();
    for (i, socket) in sockets.iter_mut().enumerate() {
        if !closed_by_server(socket, Duration::from_secs(3)).await {
            open.push(i);
            assert!(open.len() < 5, "sockets still open: {open:?}");
        }
    }
    assert!(open.is_empty(), "sockets still open: {open:?}");
    let metrics = server.get_text("/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("kensa_connections_refused_total{port=\"http\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("refused connections are counted");
    assert!(refused > 0.0);
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = open_fds();
    assert!(
        after <= before + 16,
        "descriptors held after the flood: {before} before, {after} after"
    );
    eprintln!(
        "600 idle and 20 slow sockets: a good request got through after {through_after:?}; \
         {refused} connections refused at the cap; descriptors {before} -> {after}"
    );
}
