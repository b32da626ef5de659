//! The fetch exchange: how a gateway runs an admitted DoGet on a worker without a gRPC call.
//!
//! ```text
//!  gateway ── "QFT2" (once per connection) ──────────────────────────► worker's Flight port
//!          ◄─ "QFT2" (the worker took the connection) ────────────────
//!          ── request: len u32 │ ticket len u32 │ ticket │ grant ────►
//!          ◄─ frames: kind u8 │ len u32 │ payload  (data… then end or error)
//! ```
//!
//! A short query through the gateway is three gRPC call ends there, and on a small machine each
//! costs more CPU than the gateway's own work: h2 writes a request's headers, data and end, and
//! a response's data and trailers, as separate socket writes. The hop to the worker carries one
//! ticket and a stream of Flight data, so it needs none of HTTP/2's multiplexing: a connection
//! runs one fetch at a time (a pool of them per worker), flow control is TCP's own (a client
//! that stops reading stalls only its own connection), and a request and the frames ready
//! together each go in one write. The worker tells the exchange from HTTP/2 by its first four
//! bytes on the same port, and runs a fetch as the same DoGet with the same grant and ticket
//! checks.
//!
//! The worker echoes the magic as soon as it takes a connection, before it reads a request, so
//! a gateway whose new connection closes tells the two cases apart from the bytes alone: no
//! echo means the worker never took the request (it does not speak this version, is at its
//! connection cap, or died first) and gRPC may carry the query; an echo means it failed with
//! the request in hand, which counts against the query. (Judged by whether a second connection
//! is accepted, the first case is a race: a killed worker's connections close before its
//! listening socket does.) A peer of another version sees other magic, takes it for HTTP/2
//! and hangs up, so either side falls back to gRPC.

/// The first bytes of a fetch connection (an HTTP/2 connection starts with `PRI `), and the
/// worker's first bytes on it.
pub const MAGIC: &[u8; 4] = b"QFT2";

/// A frame of Flight data: a protobuf `FlightData`.
pub const FRAME_DATA: u8 = 1;
/// The fetch ended without error; the connection takes the next request.
pub const FRAME_END: u8 = 2;
/// The fetch failed: a gRPC status code (i32, big-endian), the worker's state if it sent one
/// (a u8 length and the text; see `protocol::WORKER_STATE_HEADER`) and the message (UTF-8).
pub const FRAME_ERROR: u8 = 3;

/// Bytes of a frame's header: kind and payload length.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Why bytes are not a fetch request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The request is shorter than its lengths say, or longer.
    #[error("malformed fetch request")]
    Malformed,
    /// The grant is not UTF-8.
    #[error("fetch grant is not UTF-8")]
    Grant,
}

/// A request as sent, length prefix included: the DoGet ticket and the grant header's value.
pub fn encode_request(ticket: &[u8], grant: &str) -> Vec<u8> {
    let body = 4 + ticket.len() + grant.len();
    let mut out = Vec::with_capacity(4 + body);
    out.extend_from_slice(&len_u32(body).to_be_bytes());
    out.extend_from_slice(&len_u32(ticket.len()).to_be_bytes());
    out.extend_from_slice(ticket);
    out.extend_from_slice(grant.as_bytes());
    out
}

/// The ticket and grant of a request body (what follows its length prefix).
pub fn decode_request(body: &[u8]) -> Result<(&[u8], &str), FetchError> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or(FetchError::Malformed)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| FetchError::Malformed)?;
    if len > rest.len() {
        return Err(FetchError::Malformed);
    }
    let (ticket, grant) = rest.split_at(len);
    let grant = std::str::from_utf8(grant).map_err(|_| FetchError::Grant)?;
    Ok((ticket, grant))
}

/// A frame's header.
pub fn frame_header(kind: u8, len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let [a, b, c, d] = len_u32(len).to_be_bytes();
    [kind, a, b, c, d]
}

/// The kind and payload length of a frame header.
pub fn parse_frame_header(header: [u8; FRAME_HEADER_BYTES]) -> (u8, usize) {
    let [kind, a, b, c, d] = header;
    (kind, u32::from_be_bytes([a, b, c, d]) as usize)
}

/// An error frame's payload: the status code, the worker's state and the message.
pub fn encode_error(code: i32, state: Option<&str>, message: &str) -> Vec<u8> {
    let state = state.unwrap_or("").as_bytes();
    let state = &state[..state.len().min(usize::from(u8::MAX))];
    let mut out = Vec::with_capacity(5 + state.len() + message.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.push(u8::try_from(state.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(state);
    out.extend_from_slice(message.as_bytes());
    out
}

/// A failed fetch as the worker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// gRPC status code.
    pub code: i32,
    /// The worker's state (e.g. warming up), when the worker itself cannot serve.
    pub state: Option<String>,
    /// The status message.
    pub message: String,
}

/// An error frame's payload, read back.
pub fn decode_error(payload: &[u8]) -> Option<FetchFailure> {
    let (code, rest) = payload.split_first_chunk::<4>()?;
    let (state_len, rest) = rest.split_first()?;
    let state_len = usize::from(*state_len);
    if state_len > rest.len() {
        return None;
    }
    let (state, message) = rest.split_at(state_len);
    Some(FetchFailure {
        code: i32::from_be_bytes(*code),
        state: (!state.is_empty()).then(|| String::from_utf8_lossy(state).into_owned()),
        message: String::from_utf8_lossy(message).into_owned(),
    })
}

/// Lengths are bounded by the message limits long before 4 GiB.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips() {
        let wire = encode_request(b"ticket", "grant");
        let (len, body) = wire.split_first_chunk::<4>().unwrap();
        assert_eq!(u32::from_be_bytes(*len) as usize, body.len());
        assert_eq!(decode_request(body), Ok((&b"ticket"[..], "grant")));
    }

    #[test]
    fn frames_round_trip() {
        assert_eq!(
            parse_frame_header(frame_header(FRAME_DATA, 70_000)),
            (FRAME_DATA, 70_000)
        );
        let failure = |code, state: Option<&str>, message: &str| FetchFailure {
            code,
            state: state.map(str::to_owned),
            message: message.to_owned(),
        };
        assert_eq!(
            decode_error(&encode_error(7, None, "denied")),
            Some(failure(7, None, "denied"))
        );
        assert_eq!(
            decode_error(&encode_error(14, Some("warming-up"), "not yet")),
            Some(failure(14, Some("warming-up"), "not yet"))
        );
        assert_eq!(decode_error(&[0, 0]), None);
        assert_eq!(decode_error(&[0, 0, 0, 1, 9, b'x']), None);
    }

    proptest! {
        /// Any bytes decode to a request or an error; none panics or reads past the end.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((ticket, grant)) = decode_request(&body) {
                prop_assert_eq!(4 + ticket.len() + grant.len(), body.len());
            }
        }
    }
}
