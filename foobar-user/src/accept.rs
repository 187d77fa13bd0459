//! The accept loop both listeners share (control socket, metrics): at most
//! `max_connections` connections are served at once; beyond that the loop
//! stops accepting, so further clients wait in the kernel's backlog and
//! hold none of the daemon's file descriptors.
use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::sync::Semaphore;

/// Accepts with `accept` and hands each connection to `serve` on a task of
/// its own, until the semaphore is closed. A failed accept (e.g. out of
/// file descriptors) is logged with `what` and retried after 100 ms, so
/// the loop never spins.
pub async fn bounded<S, A, AF, F, FF>(max_connections: usize, what: &str, mut accept: A, serve: F)
where
    A: FnMut() -> AF,
    AF: Future<Output = io::Result<S>>,
    F: Fn(S) -> FF,
    FF: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "accepting on the {what} failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(slot);
        });
    }
}
