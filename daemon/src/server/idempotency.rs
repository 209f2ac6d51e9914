//! Safe retries: the `Idempotency-Key` request header.
//!
//! References are anonymous counts, so a client that lost the response of
//! a release and sends it again would drop a second reference, and one that
//! lost the response of a registration would leak one. A `POST` or `DELETE`
//! carrying `Idempotency-Key: K` runs once: its successful outcome (status,
//! body) is remembered for [`TTL`] (at most [`CAPACITY`] keys, oldest
//! forgotten first), and a repeat with the same key, method and URI gets
//! that outcome again, marked `Idempotent-Replayed: true`, without running.
//!
//! - A failure is not remembered: a store operation that fails has changed
//!   nothing, so running it again is safe and lets a retry succeed.
//! - The operation runs to completion on its own task even if the client
//!   goes away, so a client that lost the response finds its outcome.
//! - A repeat while the first is still running gets 409; the same key on
//!   another method, URI or JSON body gets 422 (a tar upload's body is not
//!   compared).
//! - The table lives in memory: a restart of the daemon forgets it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header of a replayed outcome.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long an outcome is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many outcomes are remembered at most.
pub const CAPACITY: usize = 65_536;
/// Largest response body remembered (the operations concerned answer small
/// JSON documents).
const BODY_LIMIT: usize = 1 << 20;
/// Longest key accepted.
const KEY_MAX: usize = 255;

#[derive(Clone)]
struct Outcome {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

enum Entry {
    Running { fingerprint: String },
    Done { fingerprint: String, outcome: Outcome, at: Instant },
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// Completion order, for expiry and the capacity bound.
    order: VecDeque<(Instant, String)>,
}

impl Table {
    fn expire(&mut self, now: Instant, ttl: Duration, capacity: usize) {
        while let Some((at, key)) = self.order.front() {
            let expired = now.duration_since(*at) >= ttl;
            if !expired && self.order.len() <= capacity {
                break;
            }
            // An entry re-done later has a newer `at`: only remove the one this row records.
            if let Some(Entry::Done { at: done_at, .. }) = self.entries.get(key)
                && done_at == at
            {
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
    }
}

/// The remembered outcomes of one daemon.
pub struct Idempotency {
    table: Mutex<Table>,
    ttl: Duration,
    capacity: usize,
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency::new(TTL, CAPACITY)
    }
}

enum Start {
    Run,
    Replay(Outcome),
    Busy,
    Mismatch,
}

impl Idempotency {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Idempotency { table: Mutex::new(Table::default()), ttl, capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&self, key: &str, fingerprint: &str) -> Start {
        let mut t = self.lock();
        t.expire(Instant::now(), self.ttl, self.capacity);
        match t.entries.get(key) {
            Some(Entry::Running { fingerprint: f }) | Some(Entry::Done { fingerprint: f, .. }) if f != fingerprint => {
                Start::Mismatch
            }
            Some(Entry::Running { .. }) => Start::Busy,
            Some(Entry::Done { outcome, .. }) => Start::Replay(outcome.clone()),
            None => {
                t.entries.insert(key.to_owned(), Entry::Running { fingerprint: fingerprint.to_owned() });
                Start::Run
            }
        }
    }

    fn finish(&self, key: &str, fingerprint: &str, outcome: Option<Outcome>) {
        let mut t = self.lock();
        match outcome {
            Some(outcome) => {
                let at = Instant::now();
                t.entries.insert(key.to_owned(), Entry::Done { fingerprint: fingerprint.to_owned(), outcome, at });
                t.order.push_back((at, key.to_owned()));
                t.expire(at, self.ttl, self.capacity);
            }
            None => {
                t.entries.remove(key);
            }
        }
    }

    /// Keys remembered or running (for tests).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn valid_key(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= KEY_MAX && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// Middleware: run a keyed `POST`/`DELETE` once, replay its outcome to repeats.
pub async fn middleware(State(idem): State<Arc<Idempotency>>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let Some(key) = valid_key(raw).map(str::to_owned) else {
        return ApiError::bad_request(format!(
            "{HEADER}: want 1-{KEY_MAX} visible ASCII characters (a UUID, for example)"
        ))
        .into_response();
    };
    // A JSON body is small (1 MiB at most): it is part of the request's
    // identity. A tar upload's is not compared.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (req, body_digest) = if is_json {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, super::routes::JSON_BODY_LIMIT).await {
            Ok(b) => {
                let d = layer::Digest::of(&b).to_string();
                (Request::from_parts(parts, Body::from(b)), d)
            }
            Err(e) => return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("JSON body: {e}")).into_response(),
        }
    } else {
        (req, String::from("-"))
    };
    let fingerprint = format!("{} {} {body_digest}", req.method(), req.uri());
    match idem.start(&key, &fingerprint) {
        Start::Run => {}
        Start::Replay(outcome) => return replay(outcome),
        Start::Busy => {
            return ApiError::new(
                StatusCode::CONFLICT,
                format!("a request with {HEADER} {key:?} is still running; retry once it has finished"),
            )
            .into_response();
        }
        Start::Mismatch => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{HEADER} {key:?} was used for another request (another method, URI or JSON body); use a new key"
                ),
            )
            .into_response();
        }
    }
    // Run (and record) to completion even if this request is dropped.
    let (idem2, key2, fingerprint2) = (idem.clone(), key.clone(), fingerprint.clone());
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, BODY_LIMIT).await;
        let outcome = match &bytes {
            Ok(b) if parts.status.is_success() => Some(Outcome {
                status: parts.status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                body: b.clone(),
            }),
            _ => None,
        };
        idem.finish(&key, &fingerprint, outcome);
        match bytes {
            Ok(b) => Response::from_parts(parts, Body::from(b)),
            Err(e) => ApiError::internal(format!("buffering a response: {e}")).into_response(),
        }
    });
    match task.await {
        Ok(resp) => resp,
        Err(e) => {
            // It never recorded an outcome: let a retry run.
            idem2.finish(&key2, &fingerprint2, None);
            ApiError::internal(format!("request task failed: {e}")).into_response()
        }
    }
}

fn replay(outcome: Outcome) -> Response {
    let mut resp = Response::new(Body::from(outcome.body));
    *resp.status_mut() = outcome.status;
    if let Some(ct) = outcome.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(body: &'static str) -> Outcome {
        Outcome { status: StatusCode::OK, content_type: None, body: Bytes::from_static(body.as_bytes()) }
    }

    #[test]
    fn first_outcome_is_replayed_failures_are_forgotten_keys_are_bounded() {
        let idem = Idempotency::new(Duration::from_secs(3600), 2);
        assert!(matches!(idem.start("a", "POST /x"), Start::Run));
        assert!(matches!(idem.start("a", "POST /x"), Start::Busy));
        assert!(matches!(idem.start("a", "DELETE /y"), Start::Mismatch));
        idem.finish("a", "POST /x", Some(outcome("first")));
        match idem.start("a", "POST /x") {
            Start::Replay(o) => assert_eq!(o.body, "first"),
            _ => panic!("not replayed"),
        }
        // A failure is forgotten: the retry runs.
        assert!(matches!(idem.start("b", "POST /x"), Start::Run));
        idem.finish("b", "POST /x", None);
        assert!(matches!(idem.start("b", "POST /x"), Start::Run));
        idem.finish("b", "POST /x", Some(outcome("b")));
        assert!(matches!(idem.start("c", "POST /x"), Start::Run));
        idem.finish("c", "POST /x", Some(outcome("c")));
        // Capacity 2: the oldest ("a") is forgotten.
        assert_eq!(idem.len(), 2);
        assert!(matches!(idem.start("a", "POST /x"), Start::Run));
    }

    #[test]
    fn outcomes_expire() {
        let idem = Idempotency::new(Duration::from_millis(0), 10);
        assert!(matches!(idem.start("a", "POST /x"), Start::Run));
        idem.finish("a", "POST /x", Some(outcome("x")));
        assert!(matches!(idem.start("a", "POST /x"), Start::Run));
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(valid_key(&HeaderValue::from_static("9b2c-uuid")), Some("9b2c-uuid"));
        assert_eq!(valid_key(&HeaderValue::from_static("")), None);
        assert_eq!(valid_key(&HeaderValue::from_static("has space")), None);
        let long = "k".repeat(KEY_MAX + 1);
        assert_eq!(valid_key(&HeaderValue::from_str(&long).unwrap()), None);
    }
}
