//! The worker's DataFusion engine: a pre-warmed session shared by all queries, plans kept by
//! SQL text, and per-query execution with its own memory pool and deadline.
//!
//! ```text
//!  warm_up(catalog) ──► base SessionState (tables registered, Parquet footers cached,
//!                        hot tables in memory)
//!  per query ──► logical plan (kept by text: the GetFlightInfo that plans a statement and the
//!                DoGet that runs it, and every repeat, plan it once) ──► tables checked
//!            ──► physical plan ──► TaskContext { shared caches and object stores, own memory
//!                pool } ──► execute_stream ──► deadline-limited stream
//! ```
//!
//! Sharing the cache manager keeps the metadata read at warm-up useful for every query; giving
//! each query its own memory pool means one runaway query hits its own limit and fails alone.
//! Nothing per query builds a session: a query clones the base state once (for its own start
//! time, which `now()` reads) and runs under a task context that carries its pool.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::Stream;
use object_store::ObjectStore;
use tokio::time::{Instant, Sleep};
use url::Url;

use crate::catalog::{Catalog, CatalogError};
use quiver_core::cache::TextCache;

pub use quiver_core::protocol::DEFAULT_QUERY_TIMEOUT;

/// Limits every query on this worker runs under.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Bytes of operator memory one query may reserve (hash tables, sort buffers).
    pub memory_limit: usize,
    /// Wall-clock time from planning to the last batch.
    pub timeout: Duration,
}

/// Why a query failed, sorted by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SQL is malformed, names something that does not exist, or is not a read-only query.
    #[error("{0}")]
    InvalidQuery(String),
    /// The query needed more memory than its limit.
    #[error("query exceeded its memory limit of {}: {detail}", quiver_core::units::format_size(*.limit_bytes as u64))]
    MemoryLimit {
        /// The limit in bytes.
        limit_bytes: usize,
        /// DataFusion's account of the failed reservation.
        detail: String,
    },
    /// The query ran longer than its time limit.
    #[error("query exceeded its time limit of {}", humantime::format_duration(*.limit))]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The plan scans a table the tenant may not read (the gateway's check should have refused
    /// it first; this is the second line).
    #[error("the query reads {table}, which its tenant may not read")]
    Forbidden {
        /// The table, `catalog.schema.table`.
        table: String,
    },
    /// SQL that DataFusion parses but cannot run.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// Anything else: data that cannot be read, an engine bug.
    #[error("query execution failed: {0}")]
    Execution(#[source] Box<DataFusionError>),
}

impl EngineError {
    fn classify(err: DataFusionError, limits: &QueryLimits) -> Self {
        let root = err.find_root();
        match root {
            // `Execution` is what DataFusion raises for bad arguments to a function
            // (`arrow_cast(1, 'Foo')`, a zero step); the files are the operator's, so a broken
            // one surfaces as a Parquet or I/O error, not this.
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::Execution(_) => EngineError::InvalidQuery(root.to_string()),
            DataFusionError::NotImplemented(m) => EngineError::NotSupported(m.clone()),
            DataFusionError::ResourcesExhausted(m) => EngineError::MemoryLimit {
                limit_bytes: limits.memory_limit,
                detail: m.clone(),
            },
            // What the query asked of its values: fix the query, not the worker.
            DataFusionError::ArrowError(e, _)
                if matches!(
                    **e,
                    arrow::error::ArrowError::DivideByZero
                        | arrow::error::ArrowError::CastError(_)
                        | arrow::error::ArrowError::ParseError(_)
                        | arrow::error::ArrowError::ArithmeticOverflow(_)
                ) =>
            {
                EngineError::InvalidQuery(root.to_string())
            }
            _ => EngineError::Execution(Box::new(err)),
        }
    }
}

/// Bytes of SQL text (plus a fixed estimate per plan) the plan cache holds.
const PLAN_CACHE_BYTES: usize = 16 << 20;
/// What one cached plan is counted as beyond its text: plans of short dashboard queries are a
/// few kilobytes of nodes and expressions.
const PLAN_BYTES_ESTIMATE: usize = 8 << 10;

/// A statement planned once: its logical plan, placeholders unbound, and its result schema.
#[derive(Debug)]
struct Planned {
    plan: LogicalPlan,
    schema: SchemaRef,
}

/// The warmed engine. Cheap to share; each query runs under its own task context.
pub struct Engine {
    base: SessionState,
    limits: QueryLimits,
    /// Logical plans by SQL text. The catalog is fixed for the worker's life, so a plan stays
    /// valid; authority is checked on every use, not at caching.
    plans: TextCache<Arc<Planned>>,
}

impl Engine {
    /// Registers every table of `catalog`, reads its Parquet metadata into the shared caches and
    /// loads hot tables into memory. Returns only when the worker is ready to serve.
    pub async fn warm_up(catalog: &Catalog, limits: QueryLimits) -> Result<Self, CatalogError> {
        let config = session_config()
            .map_err(|e| register_error("<engine settings>", &catalog.tables[0].url, e))?
            .with_default_catalog_and_schema(&catalog.catalog, &catalog.schema)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        let registry: Arc<dyn ObjectStoreRegistry> = Arc::new(DefaultObjectStoreRegistry::new());
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(registry.clone())
            .build_arc()
            .map_err(|e| register_error("<runtime>", &catalog.tables[0].url, e))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);

        for table in &catalog.tables {
            let fail = |e| register_error(&table.name, &table.url, e);
            if table.url.scheme() != "file" {
                let store = object_store_for(&table.url).map_err(fail)?;
                registry.register_store(&table.url, store);
            }
            ctx.register_parquet(
                &table.name,
                table.url.as_str(),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(fail)?;
            if table.hot {
                let df = ctx.table(&table.name).await.map_err(fail)?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let batches = df.collect().await.map_err(fail)?;
                let partitions = ctx.state().config().target_partitions();
                let mem =
                    MemTable::try_new(schema, split_in_order(batches, partitions)).map_err(fail)?;
                ctx.deregister_table(&table.name).map_err(fail)?;
                ctx.register_table(&table.name, Arc::new(mem))
                    .map_err(fail)?;
            } else {
                // Planning and counting reads every footer into the shared metadata and
                // statistics caches, so the first real query does not pay for it.
                ctx.sql(&format!("SELECT count(*) FROM \"{}\"", table.name))
                    .await
                    .map_err(fail)?
                    .collect()
                    .await
                    .map_err(fail)?;
            }
            tracing::info!(table = %table.name, url = %table.url, hot = table.hot, "table warmed");
        }
        Ok(Self::from_state(ctx.state(), limits))
    }

    /// An engine over a session built elsewhere (tests, embedders, benchmarks): queries run
    /// on `base`, each with its own memory pool as usual.
    pub fn from_state(mut base: SessionState, limits: QueryLimits) -> Self {
        crate::output_bounds::register(&mut base, limits.memory_limit)
            .expect("replacing built-in functions by name cannot fail");
        Self {
            base,
            limits,
            plans: TextCache::new(PLAN_CACHE_BYTES),
        }
    }

    /// The limits queries run under.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// The shared, warmed session (catalog browsing for metadata commands).
    pub fn base_state(&self) -> &SessionState {
        &self.base
    }

    /// The state one query plans and runs with: the base, with this query's start time.
    fn query_state(&self) -> SessionState {
        let mut state = self.base.clone();
        state.mark_start_execution();
        state
    }

    /// The task context one query executes under: the shared caches and object stores, with a
    /// memory pool of its own.
    fn task_context(&self, state: &SessionState, memory_limit: usize) -> Arc<TaskContext> {
        let shared = self.base.runtime_env();
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(memory_limit),
            NonZeroUsize::new(3).expect("non-zero"),
        );
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: Arc::new(pool),
            disk_manager: shared.disk_manager.clone(),
            cache_manager: shared.cache_manager.clone(),
            object_store_registry: shared.object_store_registry.clone(),
        });
        Arc::new(TaskContext::from(state).with_runtime(runtime))
    }

    /// Plans `sql` as a read-only query with its parameter values, for its result schema.
    pub async fn plan(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        catalogs: &[String],
    ) -> Result<(LogicalPlan, SchemaRef), EngineError> {
        self.plan_limited(sql, params, &self.limits, catalogs).await
    }

    /// Plans a statement for `CreatePreparedStatement`: its result schema and the schema of the
    /// parameters its `$n` placeholders take.
    pub async fn prepare(
        &self,
        sql: &str,
        catalogs: &[String],
    ) -> Result<(SchemaRef, Schema), EngineError> {
        let (plan, schema) = self.plan_limited(sql, None, &self.limits, catalogs).await?;
        let types = plan
            .get_parameter_types()
            .map_err(|e| EngineError::classify(e, &self.limits))?;
        let params =
            quiver_core::prepared::parameter_schema(types).map_err(EngineError::InvalidQuery)?;
        Ok((schema, params))
    }

    /// The logical plan of `sql`, planned once per text: the same text from another tenant
    /// gets the same plan and its own check below.
    async fn logical_plan(
        &self,
        sql: &str,
        limits: &QueryLimits,
    ) -> Result<Arc<Planned>, EngineError> {
        if let Some(planned) = self.plans.get(sql) {
            return Ok(planned);
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        // The worker's own bound on nesting: the text is checked again where it is parsed.
        quiver_core::sql::check_shape(sql, usize::MAX)
            .map_err(|e| EngineError::InvalidQuery(e.to_string()))?;
        let plan = self
            .query_state()
            .create_logical_plan(sql)
            .await
            .map_err(|e| EngineError::classify(e, limits))?;
        options
            .verify_plan(&plan)
            .map_err(|e| EngineError::classify(e, limits))?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let planned = Arc::new(Planned { plan, schema });
        self.plans.insert(sql, planned.clone(), PLAN_BYTES_ESTIMATE);
        Ok(planned)
    }

    /// Plans `sql` exactly as given (the gateway numbered its placeholders), then checks every
    /// table the plan scans against `catalogs` before anything runs.
    async fn plan_limited(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        limits: &QueryLimits,
        catalogs: &[String],
    ) -> Result<(LogicalPlan, SchemaRef), EngineError> {
        let planned = self.logical_plan(sql, limits).await?;
        let config = self.base.config_options();
        crate::authorise::check_plan(
            &planned.plan,
            catalogs,
            &config.catalog.default_catalog,
            &config.catalog.default_schema,
        )
        .map_err(|forbidden| EngineError::Forbidden {
            table: forbidden.table,
        })?;
        match params {
            Some(values) => {
                let plan = planned
                    .plan
                    .clone()
                    .with_param_values(values)
                    .map_err(|e| EngineError::classify(e, limits))?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                Ok((plan, schema))
            }
            None => Ok((planned.plan.clone(), planned.schema.clone())),
        }
    }

    /// Plans and starts `sql`; batches stream as DataFusion produces them, ending with
    /// [`EngineError::Timeout`] if the deadline passes first.
    /// `memory_limit`, from the query's resource group, can only tighten the worker's limit.
    pub async fn execute(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        memory_limit: Option<u64>,
        catalogs: &[String],
    ) -> Result<QueryStream, EngineError> {
        let mut limits = self.limits;
        if let Some(cap) = memory_limit {
            limits.memory_limit = limits
                .memory_limit
                .min(usize::try_from(cap).unwrap_or(usize::MAX));
        }
        let deadline = Instant::now() + limits.timeout;
        let started = tokio::time::timeout_at(deadline, async {
            let (plan, schema) = self.plan_limited(sql, params, &limits, catalogs).await?;
            let state = self.query_state();
            let physical = state
                .create_physical_plan(&plan)
                .await
                .map_err(|e| EngineError::classify(e, &limits))?;
            let task = self.task_context(&state, limits.memory_limit);
            let stream = datafusion::physical_plan::execute_stream(physical, task)
                .map_err(|e| EngineError::classify(e, &limits))?;
            Ok::<_, EngineError>((schema, stream))
        })
        .await
        .map_err(|_| EngineError::Timeout {
            limit: limits.timeout,
        })??;
        Ok(QueryStream {
            schema: started.0,
            inner: Some(started.1),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            limits,
        })
    }

    /// Statements whose plans are kept.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }
}

/// The session settings every worker query runs with: DataFusion's defaults, which prune row
/// groups by statistics and bloom filters and pages by the page index, read from the metadata
/// cached at warm-up. Filter pushdown into the Parquet decoder stays off: measured with
/// `quiver bench`, it made TPC-H Q6 and the small aggregation about twice as slow and the
/// point lookup only 9 % faster (`docs/performance.md`). DataFusion's own environment
/// variables (`DATAFUSION_EXECUTION_TARGET_PARTITIONS`,
/// `DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS`, …) change them without a rebuild; an
/// invalid value is an error at start-up.
pub fn session_config() -> Result<SessionConfig, DataFusionError> {
    SessionConfig::from_env()
}

fn register_error(table: &str, url: &Url, e: DataFusionError) -> CatalogError {
    CatalogError::Register {
        table: table.to_owned(),
        url: url.clone(),
        source: Box::new(e),
    }
}

fn object_store_for(url: &Url) -> Result<Arc<dyn ObjectStore>, DataFusionError> {
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "az" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(url.as_str())
                .build()?,
        ),
        other => {
            return Err(DataFusionError::Configuration(format!(
                "no object store for scheme {other}"
            )));
        }
    };
    Ok(store)
}

/// A running query's batches, ending at the first error or at its deadline.
pub struct QueryStream {
    schema: SchemaRef,
    inner: Option<SendableRecordBatchStream>,
    deadline: Pin<Box<Sleep>>,
    limits: QueryLimits,
}

impl QueryStream {
    /// The result schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = inner.as_mut().poll_next(cx) {
            return Poll::Ready(match item {
                Some(Ok(batch)) => Some(Ok(batch)),
                Some(Err(e)) => {
                    // Dropping the plan now frees its memory and stops its tasks at once.
                    this.inner = None;
                    Some(Err(EngineError::classify(e, &this.limits)))
                }
                None => {
                    this.inner = None;
                    None
                }
            });
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.inner = None;
            return Poll::Ready(Some(Err(EngineError::Timeout {
                limit: this.limits.timeout,
            })));
        }
        Poll::Pending
    }
}

/// Splits a hot table's batches into `partitions` runs of consecutive batches, so a scan of
/// it uses every core (one partition is one thread) and each run keeps the file's order.
fn split_in_order(batches: Vec<RecordBatch>, partitions: usize) -> Vec<Vec<RecordBatch>> {
    let partitions = partitions.clamp(1, batches.len().max(1));
    let per = batches.len().div_ceil(partitions).max(1);
    let mut out: Vec<Vec<RecordBatch>> = Vec::with_capacity(partitions);
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() {
        out.push(batches.by_ref().take(per).collect());
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

#[cfg(test)]
mod split_tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::split_in_order;

    fn batch(first: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![first, first + 1]))],
        )
        .unwrap()
    }

    fn firsts(parts: &[Vec<RecordBatch>]) -> Vec<Vec<i64>> {
        parts
            .iter()
            .map(|p| {
                p.iter()
                    .map(|b| {
                        let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        assert!(!col.is_empty());
                        col.value(0)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn hot_tables_split_into_ordered_runs_one_per_partition() {
        let five: Vec<_> = (0..5).map(|i| batch(i * 10)).collect();
        assert_eq!(
            firsts(&split_in_order(five.clone(), 2)),
            [vec![0, 10, 20], vec![30, 40]]
        );
        assert_eq!(firsts(&split_in_order(five.clone(), 1)).len(), 1);
        // More partitions than batches: one batch each, none empty.
        assert_eq!(firsts(&split_in_order(five, 8)).len(), 5);
        // An empty table is one empty partition, which MemTable accepts.
        let empty = split_in_order(Vec::new(), 4);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].is_empty());
    }
}
