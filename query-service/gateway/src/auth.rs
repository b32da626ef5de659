//! Authentication: who sent the query. The first stage after the protocol, because it is the
//! cheapest rejection: a hash lookup, before any parsing or queueing.
//!
//! Clients present `authorization: Bearer <token>`, where the token is one configured for a
//! tenant (stored only as its SHA-256: right for long random tokens) or a session token from the
//! Flight Handshake, which accepts `authorization: Basic <user:password>` (passwords stored as
//! Argon2 hashes, checked in constant time, failures throttled per user) and answers with a
//! signed session token. A session names the credential it came from and ends as soon as a
//! reload removes or changes that credential.

use std::time::Duration;

use base64::Engine;
use quiver_core::seal::{Domain, Sealer};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::admission::config::Policy;

/// Session tokens: this prefix, then the sealed payload (`crate::seal`, domain Login) in
/// URL-safe base64.
const SESSION_PREFIX: &str = "qvs2.";
/// How long a session token from the Handshake stays valid.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

pub use crate::admission::config::Identity;

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
    /// Too many failed sign-ins for this user name lately.
    #[error("too many failed sign-ins for this user; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
}

/// Authenticates a call from its headers.
pub fn authenticate(
    policy: &Policy,
    sealer: &Sealer,
    headers: &MetadataMap,
) -> Result<Identity, AuthError> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    authenticate_header(policy, sealer, header)
}

/// Authenticates a call from its `authorization` header value.
pub fn authenticate_header(
    policy: &Policy,
    sealer: &Sealer,
    header: Option<&str>,
) -> Result<Identity, AuthError> {
    let header = header.map(str::trim);
    if policy.open {
        return Ok(Identity {
            tenant: policy.tenants[0].name.clone(),
            user: "anonymous".into(),
        });
    }
    let header = header.ok_or(AuthError::Missing)?;
    let token = strip_scheme(header, "bearer").ok_or(AuthError::Scheme)?;
    if let Some(session) = token.strip_prefix(SESSION_PREFIX) {
        return verify_session(policy, sealer, session);
    }
    let hash = hex(&Sha256::digest(token.as_bytes()));
    let tenant = policy.tokens.get(&hash).ok_or(AuthError::BadToken)?;
    let name = policy.tenants[*tenant].name.clone();
    Ok(Identity {
        user: name.clone(),
        tenant: name,
    })
}

/// The Handshake: checks `authorization: Basic` credentials (or a bearer token) and returns a
/// session token bound to that credential. Slow by design for passwords (Argon2): run it off
/// the async threads.
pub fn handshake(
    policy: &Policy,
    sealer: &Sealer,
    headers: &MetadataMap,
) -> Result<(Identity, String), AuthError> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(AuthError::Missing)?;
    let (identity, credential) = if let Some(basic) = strip_scheme(header, "basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::BadPassword)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::BadPassword)?;
        let Some((tenant, stored)) = policy.users.get(user) else {
            // Spend the same time on an unknown user as on a wrong password.
            let _ = verify_password(DUMMY_HASH, password);
            return Err(AuthError::BadPassword);
        };
        if !verify_password(stored, password) {
            return Err(AuthError::BadPassword);
        }
        let identity = Identity {
            tenant: policy.tenants[*tenant].name.clone(),
            user: user.to_owned(),
        };
        (identity, user_credential(stored))
    } else {
        let identity = authenticate(policy, sealer, headers)?;
        let token = strip_scheme(header, "bearer").unwrap_or_default();
        let credential = match token.strip_prefix(SESSION_PREFIX) {
            // Renewing a session keeps the credential it was bound to.
            Some(session) => session_credential(sealer, session)?,
            None => format!("t:{}", hex(&Sha256::digest(token.as_bytes()))),
        };
        (identity, credential)
    };
    let token = issue_session(sealer, &identity, &credential);
    Ok((identity, token))
}

/// A valid Argon2 hash of a random password, checked against when the user is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";

/// Checks `password` against an Argon2 PHC string in constant time.
pub fn verify_password(stored: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(stored).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// An Argon2id PHC string for `password`, with a fresh random salt (`quiver hash-password`).
pub fn hash_password(password: &str) -> String {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .expect("16 bytes is a valid salt length");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 accepts any password with a generated salt")
        .to_string()
}

/// The credential a password session is bound to: changes when the password hash does.
fn user_credential(stored: &str) -> String {
    format!("u:{}", &hex(&Sha256::digest(stored.as_bytes()))[..16])
}

/// Failed sign-ins per user name: after [`FREE_FAILURES`] the next attempt waits, doubling up
/// to [`MAX_LOCKOUT`]; a success clears it. Bounded: past [`MAX_TRACKED`] names the oldest are
/// forgotten (which can only let a guesser try sooner, never lock a user out longer).
#[derive(Debug, Default)]
pub struct Throttle {
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

const FREE_FAILURES: u32 = 5;
const MAX_LOCKOUT: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 10_000;

impl Throttle {
    /// Refuses `user` while it is locked out.
    pub fn check(&self, user: &str) -> Result<(), AuthError> {
        let failures = self.failures.lock().expect("throttle");
        if let Some((count, last)) = failures.get(user)
            && *count >= FREE_FAILURES
        {
            let wait = lockout(*count);
            let elapsed = last.elapsed();
            if elapsed < wait {
                return Err(AuthError::Throttled(wait - elapsed));
            }
        }
        Ok(())
    }

    /// Records the outcome of a sign-in by `user`.
    pub fn record(&self, user: &str, ok: bool) {
        let mut failures = self.failures.lock().expect("throttle");
        if ok {
            failures.remove(user);
            return;
        }
        if failures.len() >= MAX_TRACKED && !failures.contains_key(user) {
            let oldest = failures
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                failures.remove(&oldest);
            }
        }
        let entry = failures
            .entry(user.to_owned())
            .or_insert((0, std::time::Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = std::time::Instant::now();
    }
}

fn lockout(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(FREE_FAILURES).min(6);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_LOCKOUT)
}

/// The user name a Basic `authorization` header names, for throttling.
pub fn basic_user(headers: &MetadataMap) -> Option<String> {
    let header = headers.get("authorization")?.to_str().ok()?.trim();
    let basic = strip_scheme(header, "basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.0.to_owned())
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn issue_session(sealer: &Sealer, identity: &Identity, credential: &str) -> String {
    let payload = format!("{}\n{}\n{credential}", identity.tenant, identity.user);
    let sealed = sealer.seal(Domain::Login, payload.as_bytes());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{SESSION_PREFIX}{}", b64.encode(sealed))
}

/// The credential a (valid) session token is bound to.
fn session_credential(sealer: &Sealer, token: &str) -> Result<String, AuthError> {
    let text = session_payload(sealer, token)?;
    text.split('\n')
        .nth(2)
        .map(str::to_owned)
        .ok_or(AuthError::BadToken)
}

/// The sealed payload of a session token, if its seal holds and it is younger than
/// [`SESSION_TTL`].
fn session_payload(sealer: &Sealer, token: &str) -> Result<String, AuthError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sealed = b64.decode(token).map_err(|_| AuthError::BadToken)?;
    let opened = sealer
        .open(Domain::Login, &sealed, SESSION_TTL)
        .map_err(|_| AuthError::BadToken)?;
    String::from_utf8(opened.payload.to_vec()).map_err(|_| AuthError::BadToken)
}

fn verify_session(policy: &Policy, sealer: &Sealer, token: &str) -> Result<Identity, AuthError> {
    let text = session_payload(sealer, token)?;
    let mut parts = text.split('\n');
    let (Some(tenant), Some(user), Some(credential)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::BadToken);
    };
    // A tenant removed by a config reload loses its sessions too, and so does a session whose
    // token or user was removed or whose password changed.
    if policy.tenant(tenant).is_none() {
        return Err(AuthError::BadToken);
    }
    let still_valid = match credential.split_once(':') {
        Some(("t", hash)) => policy
            .tokens
            .get(hash)
            .is_some_and(|&i| policy.tenants[i].name == tenant),
        Some(("u", _)) => policy.users.get(user).is_some_and(|(i, stored)| {
            policy.tenants[*i].name == tenant && user_credential(stored) == credential
        }),
        _ => false,
    };
    if !still_valid {
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
            "tenants:\n  - name: quiet\n    tokens: ['sha256:{}']\n    users: [{{name: alice, password: '{}'}}]\n",
            hex(&Sha256::digest(b"quiet-token-1")),
            hash_password("s3cret"),
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
        let id = authenticate(&p, &Sealer::new(b"k"), &headers("Bearer quiet-token-1")).unwrap();
        assert_eq!(id.tenant, "quiet");
        assert_eq!(
            authenticate(&p, &Sealer::new(b"k"), &headers("Bearer nope")),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            authenticate(&p, &Sealer::new(b"k"), &MetadataMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authenticate(&p, &Sealer::new(b"k"), &headers("Digest x")),
            Err(AuthError::Scheme)
        );
    }

    #[test]
    fn basic_handshake_issues_session_token() {
        let p = policy();
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (id, token) =
            handshake(&p, &Sealer::new(b"k"), &headers(&format!("Basic {basic}"))).unwrap();
        assert_eq!(id.user, "alice");
        let again =
            authenticate(&p, &Sealer::new(b"k"), &headers(&format!("Bearer {token}"))).unwrap();
        assert_eq!(again, id);
        // Another key (another deployment) does not accept it.
        assert_eq!(
            authenticate(
                &p,
                &Sealer::new(b"other"),
                &headers(&format!("Bearer {token}"))
            ),
            Err(AuthError::BadToken)
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("alice:guess");
        assert_eq!(
            handshake(&p, &Sealer::new(b"k"), &headers(&format!("Basic {wrong}"))).unwrap_err(),
            AuthError::BadPassword
        );
    }

    #[test]
    fn sessions_end_with_their_credential() {
        let p = policy();
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (_, session) =
            handshake(&p, &Sealer::new(b"k"), &headers(&format!("Basic {basic}"))).unwrap();
        let (_, token_session) =
            handshake(&p, &Sealer::new(b"k"), &headers("Bearer quiet-token-1")).unwrap();
        // The same tenant, with alice removed and the token replaced.
        let text = format!(
            "tenants:\n  - name: quiet\n    tokens: ['sha256:{}']\n",
            hex(&Sha256::digest(b"quiet-token-2")),
        );
        let reloaded = Policy::parse(&text, Path::new("a.yaml"), &["default"]).unwrap();
        for s in [&session, &token_session] {
            assert!(authenticate(&p, &Sealer::new(b"k"), &headers(&format!("Bearer {s}"))).is_ok());
            assert_eq!(
                authenticate(
                    &reloaded,
                    &Sealer::new(b"k"),
                    &headers(&format!("Bearer {s}"))
                ),
                Err(AuthError::BadToken)
            );
        }
        // A changed password ends alice's sessions too.
        let text = format!(
            "tenants:\n  - name: quiet\n    users: [{{name: alice, password: '{}'}}]\n",
            hash_password("new-s3cret"),
        );
        let changed = Policy::parse(&text, Path::new("a.yaml"), &["default"]).unwrap();
        assert_eq!(
            authenticate(
                &changed,
                &Sealer::new(b"k"),
                &headers(&format!("Bearer {session}"))
            ),
            Err(AuthError::BadToken)
        );
    }

    #[test]
    fn failed_sign_ins_are_throttled_per_user() {
        let throttle = Throttle::default();
        for _ in 0..FREE_FAILURES {
            throttle.check("alice").unwrap();
            throttle.record("alice", false);
        }
        assert!(matches!(
            throttle.check("alice"),
            Err(AuthError::Throttled(_))
        ));
        throttle.check("bob").unwrap();
        throttle.record("alice", true);
        throttle.check("alice").unwrap();
    }

    #[test]
    fn sha256_passwords_are_refused_at_load() {
        let text = format!(
            "tenants:\n  - name: q\n    users: [{{name: a, password: 'sha256:{}'}}]\n",
            hex(&Sha256::digest(b"pw")),
        );
        let err = Policy::parse(&text, Path::new("a.yaml"), &["default"]).unwrap_err();
        assert!(err.to_string().contains("Argon2"), "{err}");
    }

    #[test]
    fn open_policy_admits_everyone() {
        let id = authenticate(&Policy::open(), &Sealer::new(b"k"), &MetadataMap::new()).unwrap();
        assert_eq!(id.tenant, "default");
    }
}
