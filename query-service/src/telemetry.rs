//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), with DataFusion's and
//! other libraries' `log` records bridged in.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; safe to call once per process.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
