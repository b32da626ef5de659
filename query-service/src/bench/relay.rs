//! A bare TCP relay in front of a worker: bytes copied both ways, nothing parsed. The latency it
//! adds is the least any proxy adds on this machine (two more loopback crossings and two more
//! thread wake-ups per exchange), the floor the gateway's own added latency is read against.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Starts the relay on its own thread and single-threaded runtime, as a proxy process would
/// run, and returns the `grpc://` endpoint that reaches `worker` through it. The thread lives
/// as long as the bench.
pub fn start(worker: &str) -> anyhow::Result<String> {
    let target: SocketAddr = worker
        .strip_prefix("grpc://")
        .or_else(|| worker.strip_prefix("http://"))
        .unwrap_or(worker)
        .parse()
        .with_context(|| format!("worker endpoint {worker:?} is not an address"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("bench-relay".into())
        .spawn(move || runtime.block_on(serve(listener, target)))?;
    Ok(format!("grpc://{local}"))
}

/// Accepts connections for as long as the bench runs.
async fn serve(listener: std::net::TcpListener, target: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(relay(client, target));
    }
}

/// Copies one connection both ways until either side closes.
async fn relay(mut client: TcpStream, target: SocketAddr) -> std::io::Result<()> {
    let mut worker = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    worker.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut worker).await?;
    Ok(())
}
