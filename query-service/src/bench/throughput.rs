//! Concurrent clients for a fixed time, straight to the workers and then through the gateway:
//! what the gateway costs in queries per second when it is busy.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::ProcessCpu;
use crate::client;
use quiver_core::ticket::TicketSigner;

/// Queries per second on each side, and the gateway's share of the machine meanwhile.
#[derive(Debug, Serialize)]
pub struct Throughput {
    clients: usize,
    workers: usize,
    seconds: f64,
    direct_qps: f64,
    gateway_qps: f64,
    /// gateway / direct.
    ratio: f64,
    /// Gateway CPU time over wall time, per core of the machine, while it served.
    gateway_cpu_share: Option<f64>,
    /// Gateway CPU per query while it served, µs.
    gateway_cpu_us: Option<f64>,
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "throughput: {} clients, {} worker(s), {:.0} s each",
            self.clients, self.workers, self.seconds
        )?;
        writeln!(
            f,
            "  direct to the workers  {:>8.0} queries/s",
            self.direct_qps
        )?;
        writeln!(
            f,
            "  through the gateway    {:>8.0} queries/s  ({:.2}x direct)",
            self.gateway_qps, self.ratio
        )?;
        match (self.gateway_cpu_share, self.gateway_cpu_us) {
            (Some(share), Some(us)) => write!(
                f,
                "  gateway CPU            {:>8.1} % of the machine, {us:.0} µs per query",
                share * 100.0
            ),
            _ => write!(f, "  gateway CPU            n/a"),
        }
    }
}

/// Runs `sql` from `clients` concurrent connections for `duration`, first spread over the
/// `workers` directly, then all through the `gateway`.
pub async fn run(
    gateway: &str,
    workers: &[(u32, String)],
    key: &str,
    sql: &str,
    clients: usize,
    duration: Duration,
    gateway_cpu: Option<&ProcessCpu>,
) -> anyhow::Result<Throughput> {
    let signer = TicketSigner::new(key.as_bytes());
    let direct: Vec<String> = (0..clients)
        .map(|i| workers[i % workers.len()].1.clone())
        .collect();
    let (direct_count, _) = load(&direct, Some(&signer), sql, duration, None).await?;
    let through: Vec<String> = vec![gateway.to_owned(); clients];
    let (gateway_count, cpu) = load(&through, None, sql, duration, gateway_cpu).await?;
    let seconds = duration.as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let direct_qps = direct_count as f64 / seconds;
    let gateway_qps = gateway_count as f64 / seconds;
    Ok(Throughput {
        clients,
        workers: workers.len(),
        seconds,
        direct_qps,
        gateway_qps,
        ratio: gateway_qps / direct_qps.max(f64::MIN_POSITIVE),
        gateway_cpu_share: cpu.map(|c| c.as_secs_f64() / seconds / cores),
        gateway_cpu_us: cpu.map(|c| c.as_secs_f64() * 1e6 / gateway_count.max(1) as f64),
    })
}

/// One client per endpoint, each running `sql` back to back until `duration` has passed.
/// Returns the queries completed and the CPU `process` used meanwhile.
async fn load(
    endpoints: &[String],
    signer: Option<&TicketSigner>,
    sql: &str,
    duration: Duration,
    process: Option<&ProcessCpu>,
) -> anyhow::Result<(u64, Option<Duration>)> {
    let mut connected = Vec::new();
    for endpoint in endpoints {
        connected.push(client::connect(endpoint).await?);
    }
    let before = process.and_then(ProcessCpu::total);
    let until = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut flight in connected {
        let signer = signer.cloned();
        let sql = sql.to_owned();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                match &signer {
                    Some(signer) => client::query_worker(&mut flight, signer, &sql).await?,
                    None => client::query(&mut flight, &sql).await?,
                };
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    let used = before.and_then(|b| Some(process?.total()?.saturating_sub(b)));
    Ok((total, used))
}
