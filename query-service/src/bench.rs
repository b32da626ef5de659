//! `quiver bench`: the gateway's cost, measured as a ratio against going direct to a worker in
//! the same run, so machine speed cancels out.
//!
//! It starts `quiver up` with one worker as a child process, then runs each query through the
//! Flight SQL flow (GetFlightInfo + DoGet) alternately direct and through the gateway, so drift
//! during the run affects both paths alike.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::client;

/// Runs per query and path before measuring: fills caches and settles connections.
const WARMUP: usize = 30;
/// How long `quiver up` may take to generate data and warm its worker.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// TPC-H Q6 with the validation parameters.
const Q6: &str = "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
    WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1995-01-01' \
    AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24";

/// The queries measured, by name.
const QUERIES: [(&str, &str); 3] = [
    ("SELECT 1", "SELECT 1"),
    (
        "point lookup (orders)",
        "SELECT o_orderkey, o_custkey, o_totalprice, o_orderdate FROM orders WHERE o_orderkey = 4242",
    ),
    ("TPC-H Q6", Q6),
];

/// Latency percentiles of one query on one path.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Percentiles {
    /// Percentiles of `samples` (nearest-rank).
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Starts a local deployment, measures, prints a table.
pub async fn run(data_dir: &Path, scale_factor: f64, iterations: usize) -> anyhow::Result<()> {
    if iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot locate the quiver executable")?;
    // The bench knows the deployment's key, so it can call the worker as the gateway does.
    let key = quiver_core::ticket::TicketSigner::random_key();
    let signer = quiver_core::ticket::TicketSigner::new(key.as_bytes());
    let mut up = Command::new(exe)
        .env("QUIVER_TICKET_KEY", &key)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--scale-factor",
        ])
        .arg(scale_factor.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start quiver up")?;
    let mut lines = BufReader::new(up.stdout.take().expect("piped")).lines();
    let (mut worker, mut gateway) = (None, None);
    tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("worker started: ") {
                worker = rest.split("endpoint=").nth(1).map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("quiver ready: ") {
                gateway = Some(rest.to_owned());
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("quiver up did not become ready in time")??;
    let (Some(worker), Some(gateway)) = (worker, gateway) else {
        bail!("quiver up exited before it was ready");
    };

    let mut direct = client::connect(&worker).await?;
    let mut via_gateway = client::connect(&gateway).await?;
    println!(
        "quiver bench: TPC-H SF {scale_factor}, {iterations} runs per query and path, 1 worker\n"
    );
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>12} {:>9} {:>12}",
        "query", "direct p50", "direct p99", "gateway p50", "gateway p99", "p50 ratio", "added p50"
    );
    for (name, sql) in QUERIES {
        for _ in 0..WARMUP {
            client::query_worker(&mut direct, &signer, sql).await?;
            client::query(&mut via_gateway, sql).await?;
        }
        let mut d = Vec::with_capacity(iterations);
        let mut g = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            client::query_worker(&mut direct, &signer, sql).await?;
            d.push(t.elapsed());
            let t = Instant::now();
            client::query(&mut via_gateway, sql).await?;
            g.push(t.elapsed());
        }
        let (d, g) = (Percentiles::of(&mut d), Percentiles::of(&mut g));
        println!(
            "{:<24} {:>12} {:>12} {:>12} {:>12} {:>9.3} {:>9} µs",
            name,
            fmt_us(d.p50),
            fmt_us(d.p99),
            fmt_us(g.p50),
            fmt_us(g.p99),
            g.p50.as_secs_f64() / d.p50.as_secs_f64(),
            (g.p50.as_micros() as i128 - d.p50.as_micros() as i128),
        );
    }
    drop(up.stdin.take());
    let _ = up.start_kill();
    let _ = up.wait().await;
    Ok(())
}

fn fmt_us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
    }
}
