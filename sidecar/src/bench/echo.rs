//! The ceiling for one loopback HTTP hop: an axum server that answers every
//! POST with the body it got, and nothing else. `bench overhead` runs it as
//! a process of its own (`coded-sidecar bench echo`) on one thread, as the
//! frontend runs by default, so that its hop pays what the frontend's
//! does: a wake-up of another process on each side, and its CPU time is
//! measured apart from the load generator's.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use tokio::net::TcpListener;

/// Binds `addr`, prints the URL (the line [`crate::local::Child`] waits
/// for) and serves until the process is stopped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("echo serving on http://{}", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().fallback(post(|body: Bytes| async move { body }));
    axum::serve(listener, app).await
}
