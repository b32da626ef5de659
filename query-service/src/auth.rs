//! Authentication: who sent the query. The first stage after the protocol, because it is the
//! cheapest rejection: a hash lookup, before any parsing or queueing.
//!
//! Clients present `authorization: Bearer <token>`, where the token is one configured for a
//! tenant (stored only as its SHA-256) or a session token from the Flight Handshake, which
//! accepts `authorization: Basic <user:password>` and answers with a signed session token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::admission::config::Policy;

const SESSION_PREFIX: &str = "qvs1.";
/// How long a session token from the Handshake stays valid.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Who a query is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Tenant name.
    pub tenant: String,
    /// User name (the tenant's name for tenant-wide tokens).
    pub user: String,
}

/// Why credentials were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization` header while tenants are configured.
    #[error("authentication required: send 'authorization: Bearer <token>'")]
    Missing,
    /// A header in a scheme other than Bearer or (for the Handshake) Basic.
    #[error("unsupported authorization scheme; use Bearer (or Basic in the Handshake)")]
    Scheme,
    /// The token matches no tenant, or the session token is forged or expired.
    #[error("invalid or expired bearer token")]
    BadToken,
    /// Wrong user name or password.
    #[error("invalid user name or password")]
    BadPassword,
}

/// Authenticates a call from its headers.
pub fn authenticate(
    policy: &Policy,
    key: &[u8],
    headers: &MetadataMap,
) -> Result<Identity, AuthError> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if policy.open {
        return Ok(Identity {
            tenant: policy.tenants[0].name.clone(),
            user: "anonymous".into(),
        });
    }
    let header = header.ok_or(AuthError::Missing)?;
    let token = strip_scheme(header, "bearer").ok_or(AuthError::Scheme)?;
    if let Some(session) = token.strip_prefix(SESSION_PREFIX) {
        return verify_session(policy, key, session);
    }
    let hash = hex(&Sha256::digest(token.as_bytes()));
    let tenant = policy.tokens.get(&hash).ok_or(AuthError::BadToken)?;
    let name = policy.tenants[*tenant].name.clone();
    Ok(Identity {
        user: name.clone(),
        tenant: name,
    })
}

/// The Handshake: checks `authorization: Basic` credentials and returns a session token.
pub fn handshake(
    policy: &Policy,
    key: &[u8],
    headers: &MetadataMap,
) -> Result<(Identity, String), AuthError> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(AuthError::Missing)?;
    let identity = if let Some(basic) = strip_scheme(header, "basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::BadPassword)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::BadPassword)?;
        let (tenant, hash) = policy.users.get(user).ok_or(AuthError::BadPassword)?;
        if hex(&Sha256::digest(password.as_bytes())) != *hash {
            return Err(AuthError::BadPassword);
        }
        Identity {
            tenant: policy.tenants[*tenant].name.clone(),
            user: user.to_owned(),
        }
    } else {
        authenticate(policy, key, headers)?
    };
    let token = issue_session(key, &identity);
    Ok((identity, token))
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn mac(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(b"session:");
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

fn issue_session(key: &[u8], identity: &Identity) -> String {
    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let payload = format!("{}\n{}\n{issued}", identity.tenant, identity.user);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{SESSION_PREFIX}{}.{}",
        b64.encode(payload.as_bytes()),
        b64.encode(mac(key, payload.as_bytes()))
    )
}

fn verify_session(policy: &Policy, key: &[u8], token: &str) -> Result<Identity, AuthError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (payload, tag) = token.split_once('.').ok_or(AuthError::BadToken)?;
    let payload = b64.decode(payload).map_err(|_| AuthError::BadToken)?;
    let tag = b64.decode(tag).map_err(|_| AuthError::BadToken)?;
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(b"session:");
    m.update(&payload);
    m.verify_slice(&tag).map_err(|_| AuthError::BadToken)?;
    let text = String::from_utf8(payload).map_err(|_| AuthError::BadToken)?;
    let mut parts = text.split('\n');
    let (Some(tenant), Some(user), Some(issued)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::BadToken);
    };
    let issued: u64 = issued.parse().map_err(|_| AuthError::BadToken)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // A tenant removed by a config reload loses its sessions too.
    if now.saturating_sub(issued) > SESSION_TTL.as_secs() || policy.tenant(tenant).is_none() {
        return Err(AuthError::BadToken);
    }
    Ok(Identity {
        tenant: tenant.to_owned(),
        user: user.to_owned(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy() -> Policy {
        let text = format!(
            "tenants:\n  - name: quiet\n    tokens: ['sha256:{}']\n    users: [{{name: alice, password: 'sha256:{}'}}]\n",
            hex(&Sha256::digest(b"quiet-token-1")),
            hex(&Sha256::digest(b"s3cret")),
        );
        Policy::parse(&text, Path::new("a.yaml"), &["default"]).unwrap()
    }

    fn headers(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn bearer_tokens() {
        let p = policy();
        let id = authenticate(&p, b"k", &headers("Bearer quiet-token-1")).unwrap();
        assert_eq!(id.tenant, "quiet");
        assert_eq!(
            authenticate(&p, b"k", &headers("Bearer nope")),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            authenticate(&p, b"k", &MetadataMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authenticate(&p, b"k", &headers("Digest x")),
            Err(AuthError::Scheme)
        );
    }

    #[test]
    fn basic_handshake_issues_session_token() {
        let p = policy();
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (id, token) = handshake(&p, b"k", &headers(&format!("Basic {basic}"))).unwrap();
        assert_eq!(id.user, "alice");
        let again = authenticate(&p, b"k", &headers(&format!("Bearer {token}"))).unwrap();
        assert_eq!(again, id);
        // Another key (another deployment) does not accept it.
        assert_eq!(
            authenticate(&p, b"other", &headers(&format!("Bearer {token}"))),
            Err(AuthError::BadToken)
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("alice:guess");
        assert_eq!(
            handshake(&p, b"k", &headers(&format!("Basic {wrong}"))).unwrap_err(),
            AuthError::BadPassword
        );
    }

    #[test]
    fn open_policy_admits_everyone() {
        let id = authenticate(&Policy::open(), b"k", &MetadataMap::new()).unwrap();
        assert_eq!(id.tenant, "default");
    }
}
