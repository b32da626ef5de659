//! The autoscaler of `quiver up`: the operator's scaling policy over local worker processes.
//!
//! ```text
//!  GET /v1/pools (the gateway's own admin port, every 250 ms)
//!        │ in_flight, queued, arrivals/s of the pool
//!        ▼
//!  ScalingPolicy::observe ──► desired workers ──► supervisor (start pre-warmed / drain)
//! ```
//!
//! It reads the same demand report the Kubernetes operator polls, so both act on one signal.
//! With `--min-workers 0` and `--scale-to-zero-after`, the policy takes an idle pool to zero
//! and wakes it on the first sample with demand (a query held at the gateway counts). While the
//! pool is at zero, a call held at the gateway pokes the autoscaler to sample at once, as
//! Knative's activator pokes its autoscaler, so a wake-up does not wait for the next tick.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_core::scaling::{ScalingConfig, ScalingError, ScalingPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use quiver_core::demand::DemandReport;

/// How often demand is sampled: the policy reacts to a burst within one sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// The longest one demand request may take before the sample is skipped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Worker counts for `quiver up`: fixed, or a range the policy moves within.
#[derive(Debug, Clone, PartialEq)]
pub enum Scaling {
    /// Always this many workers.
    Fixed(u32),
    /// Sized from demand by the scaling policy.
    Auto(ScalingConfig),
}

impl Scaling {
    /// Workers to start with, before any demand is seen: the minimum plus the warm spares.
    pub fn initial(&self) -> u32 {
        match self {
            Scaling::Fixed(n) => *n,
            Scaling::Auto(config) => config.replicas_for(0.0),
        }
    }

    /// Checks the range holds together.
    pub fn validate(&self) -> Result<(), ScalingError> {
        match self {
            Scaling::Fixed(0) => Err(ScalingError::ZeroMax),
            Scaling::Fixed(_) => Ok(()),
            Scaling::Auto(config) => config.validate(),
        }
    }
}

/// Samples the pool's demand from the admin port at `admin` and publishes the desired worker
/// count on `desired` until the receiver side is gone. Each change is printed with its reason.
/// `held` is the pool's count of calls waiting for it to wake (`WorkerPool::subscribe_waiting`).
pub async fn run(
    admin: SocketAddr,
    pool: String,
    config: ScalingConfig,
    scale_to_zero_after: Option<Duration>,
    mut held: watch::Receiver<usize>,
    desired: watch::Sender<u32>,
) -> Result<(), ScalingError> {
    let mut policy = ScalingPolicy::new(config)?;
    policy.set_scale_to_zero_after(scale_to_zero_after);
    let start = Instant::now();
    policy.resume(Duration::ZERO, *desired.borrow());
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held_open = true;
    loop {
        let at_zero = *desired.borrow() == 0;
        tokio::select! {
            _ = tick.tick() => {}
            // A change of the held calls at a pool at zero: a query is waiting for a wake-up.
            changed = held.changed(), if at_zero && held_open => {
                // Without a sender (the pool is gone) there is nothing to poke for.
                held_open = changed.is_ok();
                if !held_open || *held.borrow_and_update() == 0 {
                    continue;
                }
            }
        }
        if desired.is_closed() {
            return Ok(());
        }
        let sample = match fetch_demand(admin).await {
            Ok(report) => report.sample_of(&pool),
            Err(e) => {
                tracing::debug!(error = %e, "demand sample skipped");
                continue;
            }
        };
        let decision = policy.observe(start.elapsed(), sample);
        if decision.changed() {
            println!(
                "scale: {} -> {} workers ({})",
                decision.previous, decision.desired, decision.reason
            );
            tracing::info!(
                from = decision.previous,
                to = decision.desired,
                reason = %decision.reason,
                "scaling decision"
            );
            desired.send_replace(decision.desired);
        }
    }
}

/// Why a demand sample could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    /// The admin port could not be reached or answered too slowly.
    #[error("admin port: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not a demand report.
    #[error("demand report: {0}")]
    Parse(String),
}

/// GET /v1/pools over HTTP/1.1 on loopback: one small request a sample, no client library needed.
pub async fn fetch_demand(admin: SocketAddr) -> Result<DemandReport, DemandError> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        let request =
            format!("GET /v1/pools HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<DemandReport, DemandError> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| DemandError::Parse("no end of headers".into()))?;
    let (head, body) = (&response[..split], &response[split + 4..]);
    let status = head.split(|b| *b == b'\n').next().unwrap_or_default();
    if !status.windows(5).any(|w| w == b" 200 ") {
        return Err(DemandError::Parse(format!(
            "status {}",
            String::from_utf8_lossy(status).trim()
        )));
    }
    let chunked = String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&body).map_err(|e| DemandError::Parse(e.to_string()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, DemandError> {
    let bad = || DemandError::Parse("bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"pools":[{"pool":"default","workers":2,"ready":2,"in_flight":5,"queued":3,"arrivals_per_sec":12.5,"worker_loads":[]}]}"#;

    #[test]
    fn reads_a_plain_response() {
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{REPORT}",
            REPORT.len()
        );
        let report = parse_response(response.as_bytes()).unwrap();
        let sample = report.sample_of("default");
        assert_eq!(sample.in_flight, 5);
        assert_eq!(sample.queued, 3);
        assert_eq!(sample.arrivals_per_sec, 12.5);
        assert_eq!(
            report.sample_of("other"),
            quiver_core::scaling::DemandSample::default()
        );
    }

    #[test]
    fn reads_a_chunked_response() {
        let (a, b) = REPORT.split_at(20);
        let response = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let report = parse_response(response.as_bytes()).unwrap();
        assert_eq!(report.sample_of("default").in_flight, 5);
    }

    #[test]
    fn refuses_errors_and_garbage() {
        let err = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope").unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n{").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn fixed_and_auto_start_sizes() {
        assert_eq!(Scaling::Fixed(3).initial(), 3);
        let auto = Scaling::Auto(ScalingConfig {
            min_replicas: 1,
            max_replicas: 4,
            warm_replicas: 1,
            ..ScalingConfig::default()
        });
        // No demand yet: the one warm spare is the whole pool.
        assert_eq!(auto.initial(), 1);
        assert!(Scaling::Fixed(0).validate().is_err());
    }
}
