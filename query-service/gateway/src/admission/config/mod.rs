//! The admission config file: tenants and credentials, rate-limit policies, the resource-group
//! tree and the selectors that map queries to groups. Parsed and validated once into a
//! [`Policy`] that cannot hold an invalid value; every error names the file, field and reason.
//!
//! ```yaml
//! tenants:
//!   - name: analytics
//!     tokens: ["sha256:<hex of the bearer token>"]   # bearer tokens, stored as hashes
//!     users: [{name: alice, password: "$argon2id$…"}]  # basic auth (quiver hash-password)
//!     catalogs: ["*"]                                  # or ["quiver"], ["quiver.public"]
//! rate_limits:
//!   - {name: per-tenant, key: [tenant], qps: 50, burst: 10}
//!   - {name: noisy-cap, match: {tenant: noisy}, key: [tenant, user], qps: 20}
//! resource_groups:
//!   - name: adhoc                 # hard_concurrency (default unlimited), max_queued (100),
//!     hard_concurrency: 2         # queue_timeout (30s), weight (1), priority (0),
//!     subgroups:                  # scheduling (weighted_fair | fair | priority),
//!       - name: "${user}"         # memory_limit (worker default), pool ("default")
//!         hard_concurrency: 1
//! selectors:                      # first match wins; fields: tenant, user (regex),
//!   - {tenant: noisy, group: adhoc}  # source (regex), tags (all present), statement, group
//! default_group: adhoc            # default: the last selector's group, else the first group
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::group::{GroupLimits, Scheduling};
use super::rate_limit::Rate;
pub use super::rate_limit::{KeyPart, RateLimitPolicy};

/// Default maximum of waiting queries per group.
const DEFAULT_MAX_QUEUED: u32 = 100;
/// Default longest wait in a queue.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pool every group runs on unless it says otherwise.
pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenants: Vec<TenantSpec>,
    #[serde(default)]
    rate_limits: Vec<RateLimitSpec>,
    #[serde(default)]
    resource_groups: Vec<GroupSpec>,
    #[serde(default)]
    selectors: Vec<SelectorSpec>,
    #[serde(default)]
    default_group: Option<String>,
}

/// A file holding only tenants (and their credential hashes), kept apart from the rest of the
/// config so it can come from a Secret while the policy comes from a ConfigMap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<TenantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSpec {
    name: String,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    users: Vec<UserSpec>,
    #[serde(default = "all_catalogs")]
    catalogs: Vec<String>,
}

fn all_catalogs() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    name: String,
    password: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    tenant: Option<String>,
    user: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSpec {
    name: String,
    #[serde(default = "global_key")]
    key: Vec<KeyPart>,
    qps: f64,
    burst: Option<u32>,
    #[serde(rename = "match", default)]
    matcher: MatchSpec,
}

fn global_key() -> Vec<KeyPart> {
    vec![KeyPart::Global]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: String,
    hard_concurrency: Option<u32>,
    max_queued: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    queue_timeout: Option<Duration>,
    weight: Option<u32>,
    priority: Option<u32>,
    scheduling: Option<Scheduling>,
    memory_limit: Option<String>,
    pool: Option<String>,
    #[serde(default)]
    subgroups: Vec<GroupSpec>,
}

/// Statement kinds a selector can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    /// `SELECT`, `WITH`, `VALUES`.
    Select,
    /// `EXPLAIN`.
    Explain,
    /// `SHOW`, `DESCRIBE`.
    Show,
    /// Anything else.
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorSpec {
    tenant: Option<String>,
    user: Option<String>,
    source: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    statement: Option<StatementKind>,
    group: String,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read admission config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the format (serde names the line and field).
    #[error("invalid admission config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: serde_yaml::Error,
    },
    /// A value is out of range or refers to something that does not exist.
    #[error("invalid admission config {path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `selectors[1].group`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// A tenant as the gateway knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Catalog patterns it may read: `*`, `catalog`, or `catalog.schema`.
    pub catalogs: Vec<String>,
}

/// One level of the group tree, with its limits resolved.
#[derive(Debug, Clone)]
pub struct GroupNode {
    /// Name, or a template such as `${user}`.
    pub name: String,
    /// Limits.
    pub limits: GroupLimits,
    /// Per-query memory limit for queries of this group, in bytes.
    pub memory_limit: Option<u64>,
    /// Pool the group's queries run on.
    pub pool: String,
    /// Children.
    pub subgroups: Vec<GroupNode>,
}

/// A compiled selector.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Tenant equals.
    pub tenant: Option<String>,
    /// User matches (anchored).
    pub user: Option<Regex>,
    /// Source matches (anchored).
    pub source: Option<Regex>,
    /// All of these tags present.
    pub tags: Vec<String>,
    /// Statement kind equals.
    pub statement: Option<StatementKind>,
    /// Target group path (dotted).
    pub group: String,
}

/// Who a query is from: a tenant of the policy and a user of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Tenant name.
    pub tenant: String,
    /// User name (the tenant's name for tenant-wide tokens).
    pub user: String,
}

/// A validated admission policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// No tenants configured: everyone is admitted as tenant `default`.
    pub open: bool,
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Tenant name to its index in `tenants`: every query looks its tenant up, and a linear
    /// scan over thousands of tenants would dominate the admission decision.
    tenant_index: HashMap<String, usize>,
    /// Bearer-token hash (lower-case hex SHA-256) to tenant index.
    pub tokens: HashMap<String, usize>,
    /// User name to (tenant index, Argon2 PHC password hash).
    pub users: HashMap<String, (usize, String)>,
    /// Rate-limit policies, in file order.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Top-level groups.
    pub groups: Vec<GroupNode>,
    /// Selectors, in order.
    pub selectors: Vec<Selector>,
    /// Group for queries no selector matches.
    pub default_group: String,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_tenants(path: &Path) -> Result<Vec<TenantSpec>, ConfigError> {
    let file: TenantsFile =
        serde_yaml::from_str(&read(path)?).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
    Ok(file.tenants)
}

impl Policy {
    /// The tenant called `name`, if configured.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenant_index.get(name).map(|&i| &self.tenants[i])
    }

    /// The policy without a config file: one open tenant, one unlimited default group.
    pub fn open() -> Self {
        Self {
            open: true,
            tenants: vec![Tenant {
                name: "default".into(),
                catalogs: all_catalogs(),
            }],
            tenant_index: HashMap::from([("default".to_owned(), 0)]),
            tokens: HashMap::new(),
            users: HashMap::new(),
            rate_limits: Vec::new(),
            groups: vec![GroupNode {
                name: "default".into(),
                limits: GroupLimits {
                    hard_concurrency: u32::MAX,
                    max_queued: 10_000,
                    queue_timeout: DEFAULT_QUEUE_TIMEOUT,
                    weight: 1,
                    priority: 0,
                    scheduling: Scheduling::WeightedFair,
                },
                memory_limit: None,
                pool: DEFAULT_POOL.into(),
                subgroups: Vec::new(),
            }],
            selectors: Vec::new(),
            default_group: "default".into(),
        }
    }

    /// The open policy on a gateway serving `pools`: its one group runs on [`DEFAULT_POOL`] when
    /// served, else on the first pool, as calls outside any group do.
    pub fn open_for(pools: &[&str]) -> Self {
        let mut policy = Self::open();
        for group in &mut policy.groups {
            group.pool = fallback_pool(pools);
        }
        policy
    }

    /// Reads and validates `path`; `pools` are the pool names groups may name.
    pub fn load(path: &Path, pools: &[&str]) -> Result<Self, ConfigError> {
        Self::load_with_tenants(path, None, pools)
    }

    /// Like [`Policy::load`], adding the tenants of `tenants` (a file with only a `tenants:`
    /// list) to those of `path`. Errors in those tenants name that file.
    pub fn load_with_tenants(
        path: &Path,
        tenants: Option<&Path>,
        pools: &[&str],
    ) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let extra = match tenants {
            Some(tenants) => Some((tenants, read_tenants(tenants)?)),
            None => None,
        };
        Self::parse_with_tenants(&text, path, extra, pools)
    }

    /// A policy from a tenants file alone: those tenants, the default group, no rate limits.
    pub fn load_tenants(tenants: &Path, pools: &[&str]) -> Result<Self, ConfigError> {
        let extra = Some((tenants, read_tenants(tenants)?));
        Self::parse_with_tenants("{}", tenants, extra, pools)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path, pools: &[&str]) -> Result<Self, ConfigError> {
        Self::parse_with_tenants(text, path, None, pools)
    }

    fn parse_with_tenants(
        text: &str,
        path: &Path,
        extra_tenants: Option<(&Path, Vec<TenantSpec>)>,
        pools: &[&str],
    ) -> Result<Self, ConfigError> {
        let file: File = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |field: String, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        let mut tenants = Vec::new();
        let mut tokens = HashMap::new();
        let mut users = HashMap::new();
        let mut names = HashSet::new();
        // Each tenant with the file it came from and its index there, for error messages.
        let (extra_path, extra) = match extra_tenants {
            Some((p, list)) => (p, list),
            None => (path, Vec::new()),
        };
        let all_tenants = file
            .tenants
            .into_iter()
            .enumerate()
            .map(|(i, t)| (path, i, t))
            .chain(
                extra
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (extra_path, i, t)),
            );
        for (index, (tenant_path, i, t)) in all_tenants.enumerate() {
            let invalid = |field: String, reason: String| ConfigError::Invalid {
                path: tenant_path.to_owned(),
                field,
                reason,
            };
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(invalid(
                    format!("tenants[{i}].name"),
                    format!("tenant {:?} is empty or declared twice", t.name),
                ));
            }
            for (j, token) in t.tokens.iter().enumerate() {
                let hash = parse_hash(token)
                    .map_err(|reason| invalid(format!("tenants[{i}].tokens[{j}]"), reason))?;
                if tokens.insert(hash, index).is_some() {
                    return Err(invalid(
                        format!("tenants[{i}].tokens[{j}]"),
                        "the same token is given to two tenants".into(),
                    ));
                }
            }
            for (j, u) in t.users.iter().enumerate() {
                let hash = parse_password_hash(&u.password).map_err(|reason| {
                    invalid(format!("tenants[{i}].users[{j}].password"), reason)
                })?;
                if users.insert(u.name.clone(), (index, hash)).is_some() {
                    return Err(invalid(
                        format!("tenants[{i}].users[{j}].name"),
                        format!("user {:?} is declared twice", u.name),
                    ));
                }
            }
            tenants.push(Tenant {
                name: t.name,
                catalogs: t.catalogs,
            });
        }

        let mut groups = Vec::new();
        let mut top = HashSet::new();
        for (i, g) in file.resource_groups.into_iter().enumerate() {
            let field = format!("resource_groups[{i}]");
            if !top.insert(g.name.clone()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("group {:?} is declared twice", g.name),
                ));
            }
            groups.push(compile_group(g, None, &field, pools, &invalid)?);
        }
        if groups.is_empty() {
            groups = Policy::open_for(pools).groups;
        }

        let mut rate_limits = Vec::new();
        for (i, r) in file.rate_limits.into_iter().enumerate() {
            let field = format!("rate_limits[{i}]");
            if !(r.qps.is_finite() && r.qps > 0.0) {
                return Err(invalid(
                    format!("{field}.qps"),
                    format!("must be a positive number, got {}", r.qps),
                ));
            }
            if r.key.is_empty() {
                return Err(invalid(
                    format!("{field}.key"),
                    "must name at least one of global, tenant, user, group".into(),
                ));
            }
            if let Some(t) = &r.matcher.tenant
                && !names.contains(t)
            {
                return Err(invalid(
                    format!("{field}.match.tenant"),
                    format!("unknown tenant {t:?}"),
                ));
            }
            if let Some(g) = &r.matcher.group {
                resolve_group(&groups, g).ok_or_else(|| {
                    invalid(
                        format!("{field}.match.group"),
                        format!("unknown group {g:?}"),
                    )
                })?;
            }
            let burst = r.burst.unwrap_or_else(|| r.qps.ceil() as u32).max(1);
            rate_limits.push(RateLimitPolicy {
                name: r.name,
                key: r.key,
                rate: Rate::new(r.qps, burst),
                tenant: r.matcher.tenant,
                user: r
                    .matcher
                    .user
                    .map(|u| anchored(&u))
                    .transpose()
                    .map_err(|e| invalid(format!("{field}.match.user"), e))?,
                group: r.matcher.group,
            });
        }

        let mut selectors = Vec::new();
        for (i, s) in file.selectors.into_iter().enumerate() {
            let field = format!("selectors[{i}]");
            if let Some(t) = &s.tenant
                && !names.contains(t)
            {
                return Err(invalid(
                    format!("{field}.tenant"),
                    format!("unknown tenant {t:?}"),
                ));
            }
            resolve_group(&groups, &s.group).ok_or_else(|| {
                invalid(
                    format!("{field}.group"),
                    format!("unknown group {:?}", s.group),
                )
            })?;
            selectors.push(Selector {
                tenant: s.tenant,
                user: s
                    .user
                    .map(|u| anchored(&u))
                    .transpose()
                    .map_err(|e| invalid(format!("{field}.user"), e))?,
                source: s
                    .source
                    .map(|u| anchored(&u))
                    .transpose()
                    .map_err(|e| invalid(format!("{field}.source"), e))?,
                tags: s.tags,
                statement: s.statement,
                group: s.group,
            });
        }
        let default_group = match file.default_group {
            Some(g) => {
                resolve_group(&groups, &g).ok_or_else(|| {
                    invalid("default_group".into(), format!("unknown group {g:?}"))
                })?;
                g
            }
            None => selectors
                .last()
                .map(|s| s.group.clone())
                .unwrap_or_else(|| groups[0].name.clone()),
        };
        let open = tenants.is_empty();
        let tenants = if open {
            Policy::open().tenants
        } else {
            tenants
        };
        Ok(Self {
            open,
            tenant_index: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tenants,
            tokens,
            users,
            rate_limits,
            groups,
            selectors,
            default_group,
        })
    }
}

fn compile_group(
    g: GroupSpec,
    parent: Option<&GroupNode>,
    field: &str,
    pools: &[&str],
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<GroupNode, ConfigError> {
    if g.name.is_empty() || g.name.contains('.') {
        return Err(invalid(
            format!("{field}.name"),
            format!("{:?} must be non-empty and contain no '.'", g.name),
        ));
    }
    if g.name.contains("${") && !matches!(g.name.as_str(), "${user}" | "${tenant}" | "${source}") {
        return Err(invalid(
            format!("{field}.name"),
            format!(
                "unknown template {:?}; use ${{user}}, ${{tenant}} or ${{source}}",
                g.name
            ),
        ));
    }
    for (value, name) in [
        (g.hard_concurrency, "hard_concurrency"),
        (g.weight, "weight"),
    ] {
        if value == Some(0) {
            return Err(invalid(
                format!("{field}.{name}"),
                "must be at least 1".into(),
            ));
        }
    }
    let named_pool = g.pool.is_some();
    let pool = g
        .pool
        .or_else(|| parent.map(|p| p.pool.clone()))
        .unwrap_or_else(|| DEFAULT_POOL.into());
    if !pools.contains(&pool.as_str()) {
        let how = if named_pool {
            "names"
        } else {
            "runs on (by default)"
        };
        return Err(invalid(
            format!("{field}.pool"),
            format!(
                "group {:?} {how} unknown pool {pool:?}; this gateway serves the pools [{}] (--worker, --pool)",
                g.name,
                pools.join(", ")
            ),
        ));
    }
    let memory_limit = g
        .memory_limit
        .map(|m| quiver_core::units::parse_size(&m))
        .transpose()
        .map_err(|e| invalid(format!("{field}.memory_limit"), e.to_string()))?
        .or(parent.and_then(|p| p.memory_limit));
    let mut node = GroupNode {
        name: g.name,
        limits: GroupLimits {
            hard_concurrency: g.hard_concurrency.unwrap_or(u32::MAX),
            max_queued: g
                .max_queued
                .or(parent.map(|p| p.limits.max_queued))
                .unwrap_or(DEFAULT_MAX_QUEUED),
            queue_timeout: g
                .queue_timeout
                .or(parent.map(|p| p.limits.queue_timeout))
                .unwrap_or(DEFAULT_QUEUE_TIMEOUT),
            weight: g.weight.unwrap_or(1),
            priority: g.priority.unwrap_or(0),
            scheduling: g.scheduling.unwrap_or_default(),
        },
        memory_limit,
        pool,
        subgroups: Vec::new(),
    };
    let mut seen = HashSet::new();
    for (i, child) in g.subgroups.into_iter().enumerate() {
        let child_field = format!("{field}.subgroups[{i}]");
        if !seen.insert(child.name.clone()) {
            return Err(invalid(
                format!("{child_field}.name"),
                format!("group {:?} is declared twice", child.name),
            ));
        }
        let compiled = compile_group(child, Some(&node), &child_field, pools, invalid)?;
        if compiled.pool != node.pool {
            return Err(invalid(
                format!("{child_field}.pool"),
                "a subgroup runs on its parent's pool".into(),
            ));
        }
        node.subgroups.push(compiled);
    }
    if node
        .subgroups
        .iter()
        .filter(|s| s.name.contains("${"))
        .count()
        > 1
    {
        return Err(invalid(
            format!("{field}.subgroups"),
            "at most one templated subgroup per group".into(),
        ));
    }
    Ok(node)
}

/// [`DEFAULT_POOL`] if among `pools`, else the first of them.
fn fallback_pool(pools: &[&str]) -> String {
    if pools.contains(&DEFAULT_POOL) {
        DEFAULT_POOL
    } else {
        pools.first().copied().unwrap_or(DEFAULT_POOL)
    }
    .to_owned()
}

/// Finds the node at a dotted path of literal names.
pub fn resolve_group<'a>(groups: &'a [GroupNode], path: &str) -> Option<&'a GroupNode> {
    let mut level = groups;
    let mut found = None;
    for part in path.split('.') {
        let node = level.iter().find(|g| g.name == part)?;
        level = &node.subgroups;
        found = Some(node);
    }
    found
}

fn parse_hash(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| {
        "must be \"sha256:<64 hex digits>\" (the token is never stored in clear)".to_owned()
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be \"sha256:<64 hex digits>\"".into());
    }
    Ok(hex.to_ascii_lowercase())
}

/// A Basic-auth password as stored: an Argon2 PHC string (`$argon2id$v=19$m=…`). SHA-256 is
/// right for long random tokens but far too fast for passwords a person chose.
fn parse_password_hash(s: &str) -> Result<String, String> {
    let hint = "must be an Argon2 hash in PHC form ($argon2id$v=19$…); `quiver hash-password` \
                prints one (the password is never stored in clear, and sha256 is for tokens only)";
    let parsed = argon2::PasswordHash::new(s).map_err(|_| hint.to_owned())?;
    if !parsed.algorithm.as_str().starts_with("argon2") || parsed.hash.is_none() {
        return Err(hint.to_owned());
    }
    Ok(s.to_owned())
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regular expression: {e}"))
}

#[cfg(test)]
mod tests;
