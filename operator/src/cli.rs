//! `quiver-operator` command line: every flag has a `QUIVER_…` environment variable, the names
//! the Helm chart's operator Deployment sets.

use std::collections::BTreeMap;
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
    /// Compare the scaling policy with Knative- and HPA-style policies over demand traces, then
    /// per-pool spares with a shared standby pool and scale to zero over a fleet of pools.
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
    /// Who may reach the workers.
    #[command(flatten)]
    pub gateway: GatewayArgs,
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
    /// How long followers wait, from the last renewal they saw, before taking the Lease over.
    #[arg(long, env = "QUIVER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal; shorter than the lease,
    /// so it stops before a follower may take over.
    #[arg(long, env = "QUIVER_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_deadline: Duration,
    /// Time between two attempts to take or renew the Lease.
    #[arg(long, env = "QUIVER_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,
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

/// `--gateway-pod-labels` default: the labels the chart puts on the gateway pods of every release
/// (the chart itself passes its release's full set, instance included).
pub const DEFAULT_GATEWAY_POD_LABELS: &str =
    "app.kubernetes.io/name=quiver,app.kubernetes.io/component=gateway";

/// The gateway, the only client each pool's NetworkPolicy lets reach the workers.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Labels of the gateway's pods, `key=value,...`: the workers admit Flight connections from
    /// pods carrying all of them.
    #[arg(long, env = "QUIVER_GATEWAY_POD_LABELS", default_value = DEFAULT_GATEWAY_POD_LABELS,
          value_parser = parse_labels)]
    pub gateway_pod_labels: BTreeMap<String, String>,
    /// Namespace of the gateway's pods (default: each pool's own namespace).
    #[arg(long, env = "QUIVER_GATEWAY_NAMESPACE")]
    pub gateway_namespace: Option<String>,
    /// Give each pool a NetworkPolicy admitting only the gateway to its workers (default
    /// true); false removes those the operator made, for clusters that manage their own.
    #[arg(long, env = "QUIVER_WORKER_NETWORK_POLICIES", default_value_t = true, action = ArgAction::Set)]
    pub worker_network_policies: bool,
}

/// Parses `key=value,...` into labels, refusing what the API server would (bad syntax) and an
/// empty set, which would select every pod of the namespace.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
        let prefix_ok = prefix.len() <= 253
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if name.is_empty()
            || !label_name_ok(name)
            || !prefix_ok
            || (key.contains('/') && prefix.is_empty())
        {
            return Err(format!("{key:?} is not a valid label key"));
        }
        if !value.is_empty() && !label_name_ok(value) {
            return Err(format!(
                "{value:?} (label {key}) is not a valid label value"
            ));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label {key} is given twice"));
        }
    }
    if labels.is_empty() {
        return Err("give at least one label: an empty selector matches every pod".into());
    }
    Ok(labels)
}

/// A label name or value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_name_ok(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::resources::GatewayPeer;

    #[test]
    fn gateway_pod_labels_default_to_the_charts_gateway_pods() {
        let labels = parse_labels(DEFAULT_GATEWAY_POD_LABELS).unwrap();
        assert_eq!(labels, GatewayPeer::default().pod_labels);
        let args = Cli::parse_from(["quiver-operator", "run", "--gateway-namespace", "quiver"]);
        let Some(Command::Run(args)) = args.command else {
            panic!("run")
        };
        assert_eq!(
            args.gateway.peer(),
            GatewayPeer {
                pod_labels: labels,
                namespace: Some("quiver".into()),
            }
        );
    }

    #[test]
    fn gateway_pod_labels_parse_and_reject_bad_selectors() {
        assert_eq!(
            parse_labels(" app.kubernetes.io/instance=prod , tier=front,empty= ").unwrap(),
            BTreeMap::from([
                ("app.kubernetes.io/instance".into(), "prod".into()),
                ("tier".into(), "front".into()),
                ("empty".into(), String::new()),
            ])
        );
        for bad in [
            "",
            " , ",
            "novalue",
            "=v",
            "a=b,a=c",
            "k=-v",
            "/k=v",
            "Bad_Prefix/k=v",
            "k=v v",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad:?} accepted");
        }
    }
}
