//! Sessions: `SetSessionOptions`, `GetSessionOptions` and `CloseSession`, for the client hints a
//! selector matches (`quiver.source`, `quiver.tags`) and the default catalog and schema.
//!
//! The options live in a signed cookie (`arrow_flight_session_id`, as the Flight spec names it),
//! not in the gateway: every reply to `SetSessionOptions` carries the whole session in a new
//! cookie, and clients with cookie support (ADBC's `rpc.with_cookie_middleware`, the JDBC
//! driver) send it back on every call. Any gateway replica can read it, and nothing expires in
//! memory; the cookie itself expires after [`SESSION_TTL`] without a change.
//!
//! Hints sent as headers (`x-quiver-source`, `x-quiver-tags`) on a call win over the session's.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quiver_core::seal::{Domain, Sealer, now_ms};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::admission::classify::ClientHints;
use quiver_core::protocol::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

/// The cookie the Flight spec suggests for session state.
pub const COOKIE: &str = "arrow_flight_session_id";
/// A session left unchanged this long is forgotten (its cookie is refused and ignored).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Option names.
pub const SOURCE: &str = "quiver.source";
/// Option name of the client tags (a string list, or a comma-separated string).
pub const TAGS: &str = "quiver.tags";
/// The default catalog; only Quiver's own can be chosen.
pub const CATALOG: &str = "catalog";
/// The default schema; only Quiver's own can be chosen.
pub const SCHEMA: &str = "schema";

/// Flight's session messages (Flight.proto), which arrow-flight 59 does not generate.
pub mod proto {
    use std::collections::HashMap;

    /// `SessionOptionValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionOptionValue {
        /// The value; none means "unset this option".
        #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
        pub option_value: Option<OptionValue>,
    }

    /// `SessionOptionValue.StringListValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringListValue {
        /// The strings.
        #[prost(string, repeated, tag = "1")]
        pub values: Vec<String>,
    }

    /// `SessionOptionValue.option_value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(clippy::enum_variant_names)] // the Flight SQL protobuf's names
    pub enum OptionValue {
        /// A string.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// A boolean.
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        /// An integer.
        #[prost(sfixed64, tag = "3")]
        Int64Value(i64),
        /// A float.
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        /// A list of strings.
        #[prost(message, tag = "5")]
        StringListValue(StringListValue),
    }

    /// `SetSessionOptionsRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetSessionOptionsRequest {
        /// Options to set (or unset, with an empty value).
        #[prost(map = "string, message", tag = "1")]
        pub session_options: HashMap<String, SessionOptionValue>,
    }

    /// `SetSessionOptionsResult.Error`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetSessionOptionError {
        /// 1 invalid name, 2 invalid value, 3 error.
        #[prost(int32, tag = "1")]
        pub value: i32,
    }

    /// `SetSessionOptionsResult`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetSessionOptionsResult {
        /// Options that were not set, and why.
        #[prost(map = "string, message", tag = "1")]
        pub errors: HashMap<String, SetSessionOptionError>,
    }

    /// `GetSessionOptionsResult`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetSessionOptionsResult {
        /// The session's options.
        #[prost(map = "string, message", tag = "1")]
        pub session_options: HashMap<String, SessionOptionValue>,
    }

    /// `CloseSessionResult`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CloseSessionResult {
        /// 1 closed.
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    /// `SetSessionOptionsResult.ErrorValue.INVALID_NAME`.
    pub const INVALID_NAME: i32 = 1;
    /// `SetSessionOptionsResult.ErrorValue.INVALID_VALUE`.
    pub const INVALID_VALUE: i32 = 2;
    /// `CloseSessionResult.Status.CLOSED`.
    pub const CLOSED: i32 = 1;
}

use proto::{OptionValue, SessionOptionValue, StringListValue};

/// A session's options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Source hint for selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Tag hints for selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When the session last changed, milliseconds since the Unix epoch.
    #[serde(default)]
    pub changed_at_ms: u64,
}

impl Session {
    /// Applies a `SetSessionOptions` request; returns the options refused, with the reason code.
    pub fn set(&mut self, options: HashMap<String, SessionOptionValue>) -> HashMap<String, i32> {
        let mut errors = HashMap::new();
        for (name, value) in options {
            let value = value.option_value;
            let ok = match (name.as_str(), value) {
                (SOURCE, None) => {
                    self.source = None;
                    true
                }
                (SOURCE, Some(OptionValue::StringValue(s))) => {
                    self.source = Some(s.trim().to_owned()).filter(|s| !s.is_empty());
                    true
                }
                (TAGS, None) => {
                    self.tags.clear();
                    true
                }
                (TAGS, Some(OptionValue::StringValue(s))) => {
                    self.tags = split_tags(&s);
                    true
                }
                (TAGS, Some(OptionValue::StringListValue(list))) => {
                    self.tags = list.values.iter().flat_map(|s| split_tags(s)).collect();
                    true
                }
                // One catalog and schema are served; choosing them is accepted so that clients
                // which always set them (JDBC `setCatalog`) work, anything else is refused.
                (CATALOG, Some(OptionValue::StringValue(s))) => s == DEFAULT_CATALOG,
                (SCHEMA, Some(OptionValue::StringValue(s))) => s == DEFAULT_SCHEMA,
                (CATALOG | SCHEMA, None) => true,
                (SOURCE | TAGS | CATALOG | SCHEMA, Some(_)) => false,
                _ => {
                    errors.insert(name, proto::INVALID_NAME);
                    continue;
                }
            };
            if !ok {
                errors.insert(name, proto::INVALID_VALUE);
            }
        }
        self.changed_at_ms = now_ms();
        errors
    }

    /// The options as `GetSessionOptions` reports them.
    pub fn options(&self) -> HashMap<String, SessionOptionValue> {
        let string = |s: &str| SessionOptionValue {
            option_value: Some(OptionValue::StringValue(s.to_owned())),
        };
        let mut out = HashMap::from([
            (CATALOG.to_owned(), string(DEFAULT_CATALOG)),
            (SCHEMA.to_owned(), string(DEFAULT_SCHEMA)),
        ]);
        if let Some(source) = &self.source {
            out.insert(SOURCE.to_owned(), string(source));
        }
        if !self.tags.is_empty() {
            out.insert(
                TAGS.to_owned(),
                SessionOptionValue {
                    option_value: Some(OptionValue::StringListValue(StringListValue {
                        values: self.tags.clone(),
                    })),
                },
            );
        }
        out
    }

    /// The call's hints: its headers, falling back to the session's values.
    pub fn hints(&self, headers: ClientHints) -> ClientHints {
        ClientHints {
            source: headers.source.or_else(|| self.source.clone()),
            tags: if headers.tags.is_empty() {
                self.tags.clone()
            } else {
                headers.tags
            },
        }
    }
}

/// A session action, decoded.
#[derive(Debug)]
pub enum SessionAction {
    /// `SetSessionOptions`.
    Set(proto::SetSessionOptionsRequest),
    /// `GetSessionOptions`.
    Get,
    /// `CloseSession`.
    Close,
}

impl SessionCodec {
    /// Answers `action` on `session`: the result message, and the `set-cookie` value when the
    /// session changed.
    pub fn answer(&self, mut session: Session, action: SessionAction) -> (Vec<u8>, Option<String>) {
        use prost::Message;
        match action {
            SessionAction::Set(request) => {
                let errors = session
                    .set(request.session_options)
                    .into_iter()
                    .map(|(name, value)| (name, proto::SetSessionOptionError { value }))
                    .collect();
                let result = proto::SetSessionOptionsResult { errors };
                (
                    result.encode_to_vec(),
                    Some(self.set_cookie(Some(&session))),
                )
            }
            SessionAction::Get => {
                let result = proto::GetSessionOptionsResult {
                    session_options: session.options(),
                };
                (result.encode_to_vec(), None)
            }
            SessionAction::Close => {
                let result = proto::CloseSessionResult {
                    status: proto::CLOSED,
                };
                (result.encode_to_vec(), Some(self.set_cookie(None)))
            }
        }
    }
}

fn split_tags(s: &str) -> Vec<String> {
    s.split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Seals sessions into cookie values and reads them back.
#[derive(Clone, Debug)]
pub struct SessionCodec {
    sealer: Sealer,
}

impl SessionCodec {
    /// A codec for `key` (the gateway's shared key).
    pub fn new(key: &[u8]) -> Self {
        Self {
            sealer: Sealer::new(key),
        }
    }

    /// The cookie value for `session`.
    pub fn encode(&self, session: &Session) -> String {
        let payload = serde_json::to_vec(session).expect("a session always serialises");
        URL_SAFE_NO_PAD.encode(self.sealer.seal_at(
            Domain::Session,
            &payload,
            session.changed_at_ms,
        ))
    }

    /// The session in a cookie value, if it is ours, unaltered and not expired.
    pub fn decode(&self, value: &str) -> Option<Session> {
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        let opened = self
            .sealer
            .open(Domain::Session, &bytes, SESSION_TTL)
            .ok()?;
        serde_json::from_slice(opened.payload).ok()
    }

    /// The session a call's `cookie` headers carry; an empty session without one.
    pub fn session_of(&self, metadata: &MetadataMap) -> Session {
        metadata
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .find_map(|(_, value)| self.decode(value.trim_matches('"')))
            .unwrap_or_default()
    }

    /// The `set-cookie` header value that stores `session` (or clears it, for `None`).
    pub fn set_cookie(&self, session: Option<&Session>) -> String {
        match session {
            Some(s) => format!(
                "{COOKIE}={}; Max-Age={}; HttpOnly",
                self.encode(s),
                SESSION_TTL.as_secs()
            ),
            None => format!("{COOKIE}=; Max-Age=0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: OptionValue) -> SessionOptionValue {
        SessionOptionValue {
            option_value: Some(v),
        }
    }

    #[test]
    fn sets_hints_and_refuses_unknown_names_and_other_catalogs() {
        let mut s = Session::default();
        let errors = s.set(HashMap::from([
            (
                SOURCE.to_owned(),
                value(OptionValue::StringValue("superset".into())),
            ),
            (
                TAGS.to_owned(),
                value(OptionValue::StringListValue(StringListValue {
                    values: vec!["etl".into(), "nightly, big".into()],
                })),
            ),
            (
                CATALOG.to_owned(),
                value(OptionValue::StringValue("quiver".into())),
            ),
            (
                SCHEMA.to_owned(),
                value(OptionValue::StringValue("elsewhere".into())),
            ),
            ("colour".to_owned(), value(OptionValue::BoolValue(true))),
        ]));
        assert_eq!(
            errors,
            HashMap::from([
                (SCHEMA.to_owned(), proto::INVALID_VALUE),
                ("colour".to_owned(), proto::INVALID_NAME),
            ])
        );
        assert_eq!(s.source.as_deref(), Some("superset"));
        assert_eq!(s.tags, vec!["etl", "nightly", "big"]);
        // Headers win; the session fills in what they leave out.
        let hints = s.hints(ClientHints {
            source: Some("header".into()),
            tags: vec![],
        });
        assert_eq!(hints.source.as_deref(), Some("header"));
        assert_eq!(hints.tags, vec!["etl", "nightly", "big"]);
        // An empty value unsets.
        s.set(HashMap::from([(
            SOURCE.to_owned(),
            SessionOptionValue { option_value: None },
        )]));
        assert_eq!(s.source, None);
    }

    #[test]
    fn cookie_round_trips_and_refuses_forgeries() {
        let codec = SessionCodec::new(b"k");
        let mut s = Session::default();
        s.set(HashMap::from([(
            TAGS.to_owned(),
            value(OptionValue::StringValue("etl".into())),
        )]));
        let cookie = codec.encode(&s);
        assert_eq!(codec.decode(&cookie), Some(s.clone()));
        assert_eq!(SessionCodec::new(b"other").decode(&cookie), None);
        let mut metadata = MetadataMap::new();
        metadata.insert("cookie", format!("a=b; {COOKIE}={cookie}").parse().unwrap());
        assert_eq!(codec.session_of(&metadata), s);
        let old = Session {
            changed_at_ms: now_ms() - SESSION_TTL.as_millis() as u64 - 1,
            ..s
        };
        assert_eq!(codec.decode(&codec.encode(&old)), None);
    }
}
