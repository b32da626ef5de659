//! The one sealing primitive: what Quiver hands out and later trusts again (query tickets,
//! login tokens, session cookies) is sealed with one shared key and opened with a domain and an
//! age limit.
//!
//! ```text
//!  sealed = HMAC-SHA256(key, domain | issued_at | payload) (32 bytes) | issued_at (8 bytes, ms
//!           since the Unix epoch, big-endian) | payload
//! ```
//!
//! The domain keeps the three kinds apart: a login token is never accepted as a cookie or a
//! ticket, whatever its bytes. Nothing is encrypted: payloads hold no secrets (SQL text, user
//! names, credential fingerprints), only their integrity and age matter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const MAC_LEN: usize = 32;
const TIME_LEN: usize = 8;

/// What a sealed value is for; part of the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Query tickets, prepared-statement handles and the gateway's grants to workers.
    Ticket,
    /// Bearer tokens a Handshake returns.
    Login,
    /// Flight SQL session options kept in a cookie.
    Session,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Ticket => b"quiver-ticket-v2\0",
            Domain::Login => b"quiver-login-v2\0",
            Domain::Session => b"quiver-session-v2\0",
        }
    }
}

/// Why a sealed value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Too short to be sealed.
    #[error("malformed")]
    Malformed,
    /// Not sealed with this key for this domain, or altered since.
    #[error("the signature does not match")]
    BadSignature,
    /// Older than the age limit.
    #[error("expired")]
    Expired,
}

/// A sealed value, opened: its payload and when it was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The payload as sealed.
    pub payload: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
}

impl Opened<'_> {
    /// How long ago it was sealed.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.issued_at_ms))
    }
}

/// Seals and opens with one key.
#[derive(Clone)]
pub struct Sealer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { key: <redacted> }")
    }
}

impl Sealer {
    /// A sealer for `key`; whoever opens must hold the same key.
    pub fn new(key: &[u8]) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        Self { mac }
    }

    /// Seals `payload` for `domain`, issued now.
    pub fn seal(&self, domain: Domain, payload: &[u8]) -> Vec<u8> {
        self.seal_at(domain, payload, now_ms())
    }

    /// Seals `payload` for `domain` as issued at `issued_at_ms`.
    pub fn seal_at(&self, domain: Domain, payload: &[u8], issued_at_ms: u64) -> Vec<u8> {
        let time = issued_at_ms.to_be_bytes();
        let tag = self.tag(domain, &time, payload);
        let mut out = Vec::with_capacity(MAC_LEN + TIME_LEN + payload.len());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&time);
        out.extend_from_slice(payload);
        out
    }

    /// The payload of `sealed` if it was sealed with this key for `domain`, unaltered, at most
    /// `max_age` ago (a value dated in the future beyond the clock skew is refused too).
    pub fn open<'a>(
        &self,
        domain: Domain,
        sealed: &'a [u8],
        max_age: Duration,
    ) -> Result<Opened<'a>, SealError> {
        if sealed.len() < MAC_LEN + TIME_LEN {
            return Err(SealError::Malformed);
        }
        let (tag, rest) = sealed.split_at(MAC_LEN);
        let (time, payload) = rest.split_at(TIME_LEN);
        let mut mac = self.mac.clone();
        mac.update(domain.tag());
        mac.update(time);
        mac.update(payload);
        mac.verify_slice(tag).map_err(|_| SealError::BadSignature)?;
        let issued_at_ms = u64::from_be_bytes(time.try_into().expect("eight bytes"));
        let now = now_ms();
        if now.saturating_sub(issued_at_ms) > millis(max_age)
            || issued_at_ms.saturating_sub(now) > millis(MAX_CLOCK_SKEW)
        {
            return Err(SealError::Expired);
        }
        Ok(Opened {
            payload,
            issued_at_ms,
        })
    }

    fn tag(&self, domain: Domain, time: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(domain.tag());
        mac.update(time);
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// How far in the future a sealed value may be dated: clocks of pods differ a little.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn opens_what_it_sealed_for_the_same_domain_only() {
        let sealer = Sealer::new(b"key");
        let sealed = sealer.seal(Domain::Ticket, b"payload");
        let opened = sealer.open(Domain::Ticket, &sealed, HOUR).unwrap();
        assert_eq!(opened.payload, b"payload");
        assert!(opened.age() < Duration::from_secs(5));
        for other in [Domain::Login, Domain::Session] {
            assert_eq!(
                sealer.open(other, &sealed, HOUR),
                Err(SealError::BadSignature)
            );
        }
        assert_eq!(
            Sealer::new(b"other").open(Domain::Ticket, &sealed, HOUR),
            Err(SealError::BadSignature)
        );
        assert_eq!(
            sealer.open(Domain::Ticket, &sealed[..10], HOUR),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn old_and_future_values_are_refused() {
        let sealer = Sealer::new(b"key");
        let old = sealer.seal_at(Domain::Login, b"x", now_ms() - 2 * millis(HOUR));
        assert_eq!(
            sealer.open(Domain::Login, &old, HOUR),
            Err(SealError::Expired)
        );
        assert!(sealer.open(Domain::Login, &old, 3 * HOUR).is_ok());
        let future = sealer.seal_at(Domain::Login, b"x", now_ms() + millis(HOUR));
        assert_eq!(
            sealer.open(Domain::Login, &future, 3 * HOUR),
            Err(SealError::Expired)
        );
    }

    proptest! {
        /// No change to a sealed value opens.
        #[test]
        fn altered_values_never_open(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let sealer = Sealer::new(b"key");
            let mut sealed = sealer.seal(Domain::Session, b"{\"user\":\"alice\"}");
            let at = index.index(sealed.len());
            sealed[at] ^= flip;
            prop_assert!(sealer.open(Domain::Session, &sealed, HOUR).is_err());
        }
    }
}
