//! The five ways the bench runs a query, each from this process.

use std::path::Path as FsPath;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::client;
use quiver_core::ticket::TicketSigner;
use quiver_worker::catalog::Catalog;
use quiver_worker::engine::{DEFAULT_QUERY_TIMEOUT, Engine, QueryLimits};

/// One way to run a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Flight SQL through the gateway, as a client does.
    Gateway,
    /// Flight SQL straight to the workers in turn, with the grant the gateway would send.
    Worker,
    /// As `Worker`, through a bare TCP relay per worker: what any proxy in between adds.
    Relay,
    /// The worker's engine in this process.
    Engine,
    /// A plain DataFusion session in this process, with the worker's settings.
    DataFusion,
}

impl Path {
    /// Every path, in the order each iteration runs them.
    pub const ALL: [Path; 5] = [
        Path::Gateway,
        Path::Worker,
        Path::Relay,
        Path::Engine,
        Path::DataFusion,
    ];
}

/// Clients of every worker, called in turn.
///
/// The gateway spreads a lone client's queries over the workers (the least loaded, rotating
/// among equals), so each worker serves every other one. The direct paths take the same turns:
/// always calling the first worker would keep its caches warmer than those of the workers the
/// gateway also reaches, and charge the difference to the gateway.
struct InTurn {
    clients: Vec<FlightSqlServiceClient<Channel>>,
    next: usize,
}

impl InTurn {
    fn next(&mut self) -> &mut FlightSqlServiceClient<Channel> {
        let i = self.next % self.clients.len();
        self.next = self.next.wrapping_add(1);
        &mut self.clients[i]
    }
}

/// What each path runs on.
pub struct Paths {
    gateway: FlightSqlServiceClient<Channel>,
    workers: InTurn,
    relays: InTurn,
    signer: TicketSigner,
    engine: Arc<Engine>,
    datafusion: SessionContext,
}

/// Every catalog: the bench's tenant may read all.
fn all_catalogs() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Paths {
    /// Connects the Flight clients (to the gateway, to each of `workers` and to a relay in
    /// front of each) and warms the in-process engines on `catalog`'s files.
    pub async fn connect(
        gateway: &str,
        workers: &[String],
        key: &str,
        catalog: &FsPath,
    ) -> anyhow::Result<Self> {
        let catalog = Catalog::load(catalog)?;
        let limits = QueryLimits {
            memory_limit: 1 << 30,
            timeout: DEFAULT_QUERY_TIMEOUT,
        };
        let engine = Engine::warm_up(&catalog, limits)
            .await
            .context("cannot warm the in-process engine")?;
        let config = quiver_worker::engine::session_config()?
            .with_default_catalog_and_schema(&catalog.catalog, &catalog.schema)
            .with_create_default_catalog_and_schema(true);
        let datafusion = SessionContext::new_with_config(config);
        for table in &catalog.tables {
            datafusion
                .register_parquet(
                    &table.name,
                    table.url.as_str(),
                    ParquetReadOptions::default(),
                )
                .await?;
        }
        if workers.is_empty() {
            bail!("no worker to measure");
        }
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for worker in workers {
            direct.push(client::connect(worker).await?);
            relayed.push(client::connect(&super::relay::start(worker)?).await?);
        }
        Ok(Self {
            gateway: client::connect(gateway).await?,
            workers: InTurn {
                clients: direct,
                next: 0,
            },
            relays: InTurn {
                clients: relayed,
                next: 0,
            },
            signer: TicketSigner::new(key.as_bytes()),
            engine: Arc::new(engine),
            datafusion,
        })
    }

    /// Runs `sql` on `path` and returns its batches.
    pub async fn run(&mut self, path: Path, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(match path {
            Path::Gateway => client::query(&mut self.gateway, sql).await?,
            Path::Worker => client::query_worker(self.workers.next(), &self.signer, sql).await?,
            Path::Relay => client::query_worker(self.relays.next(), &self.signer, sql).await?,
            Path::Engine => {
                self.engine
                    .execute(sql, None, None, &all_catalogs())
                    .await?
                    .try_collect()
                    .await?
            }
            Path::DataFusion => self.datafusion.sql(sql).await?.collect().await?,
        })
    }

    /// Runs `sql` once on every path and checks they return the same number of rows.
    pub async fn check_agree(&mut self, sql: &str) -> anyhow::Result<usize> {
        let mut rows = Vec::new();
        for path in Path::ALL {
            let batches = self.run(path, sql).await?;
            rows.push(batches.iter().map(RecordBatch::num_rows).sum::<usize>());
        }
        if rows.iter().any(|r| *r != rows[0]) {
            bail!("the paths disagree on the row count: {rows:?}");
        }
        Ok(rows[0])
    }
}
