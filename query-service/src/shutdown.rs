//! Shutdown signals: Ctrl-C, SIGTERM (what Kubernetes sends), and for supervised workers the
//! closing of standard input, which also happens when the parent dies without warning.

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted; shutting down"),
        _ = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Like [`signal`], and also resolves when standard input reaches end of file, if `watch_stdin`.
pub async fn signal_or_stdin_eof(watch_stdin: bool) {
    let stdin_eof = async {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        // A blocking read on a detached thread, not `spawn_blocking`: the runtime waits for its
        // blocking tasks when it shuts down, so a worker stopped by SIGTERM would never exit
        // while its parent still holds the pipe open.
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("stdin-eof".into())
            .spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 256];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = eof_tx.send(());
            });
        if spawned.is_err() || eof_rx.await.is_err() {
            return std::future::pending::<()>().await;
        }
        tracing::info!("parent closed stdin; shutting down");
    };
    tokio::select! {
        _ = signal() => {}
        _ = stdin_eof => {}
    }
}
