//! `quiver-operator` command line: every flag has a `QUIVER_…` environment variable, the names
//! the Helm chart's operator Deployment sets.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Kubernetes operator for Quiver query pools.
#[derive(Debug, Parser)]
#[command(name = "quiver-operator", version, about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the QueryPool CustomResourceDefinition as YAML.
    Crd,
    /// Compare the scaling policy with Knative- and HPA-style policies over demand traces.
    Simulate,
}

/// `quiver-operator run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the admin HTTP port (/healthz, /metrics).
    #[arg(long, env = "QUIVER_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Watch QueryPools in this namespace only (default: every namespace).
    #[arg(long, env = "QUIVER_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Where demand comes from.
    #[command(flatten)]
    pub demand: DemandArgs,
}

/// Leader election settings.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// Reconcile only while holding a Lease (needed with more than one replica).
    #[arg(long, env = "QUIVER_LEADER_ELECTION", default_value_t = false, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "QUIVER_LEASE_NAME", default_value = "quiver-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the client's namespace, the pod's own in a cluster).
    #[arg(long, env = "QUIVER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the hostname, which is the pod name).
    #[arg(long, env = "QUIVER_POD_NAME")]
    pub pod_name: Option<String>,
    /// How long a Lease lasts without renewal; renewed every third of it.
    #[arg(long, env = "QUIVER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
}

/// Demand polling settings.
#[derive(Debug, Clone, Args)]
pub struct DemandArgs {
    /// Gateway admin URL, e.g. http://quiver-gateway-admin.analytics.svc.cluster.local:9090. A
    /// Service name is resolved to every gateway pod through its EndpointSlices. Unset: no
    /// autoscaling on demand.
    #[arg(long, env = "QUIVER_GATEWAY_ADMIN_URL")]
    pub gateway_admin_url: Option<String>,
    /// How often to read demand; at most 1s to react to a burst within a second.
    #[arg(long, env = "QUIVER_DEMAND_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub demand_poll_interval: Duration,
    /// How long a gateway may take to answer a poll.
    #[arg(long, env = "QUIVER_DEMAND_TIMEOUT", default_value = "800ms", value_parser = humantime::parse_duration)]
    pub demand_timeout: Duration,
}

impl Default for RunArgs {
    fn default() -> Self {
        Cli::parse_from(["quiver-operator", "run"])
            .command
            .and_then(|c| match c {
                Command::Run(args) => Some(*args),
                _ => None,
            })
            .expect("run parses with defaults")
    }
}
