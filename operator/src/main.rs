//! `quiver-operator`: parses arguments, starts logging, binds the admin port and runs.

use clap::Parser;
use quiver_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or_else(|| Command::Run(Box::default())) {
        Command::Crd => print!("{}", quiver_operator::crd::crd_yaml()),
        Command::Simulate => {
            print!("{}", quiver_core::simulate::report());
            println!();
            print!("{}", quiver_core::simulate::fleet::report());
        }
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let admin = tokio::net::TcpListener::bind(args.admin_listen).await?;
            tracing::info!(admin = %admin.local_addr()?, "quiver-operator");
            quiver_operator::controller::run::run(*args, admin, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// Completes on SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
