//! The HTTP side of the distribution API: which scheme a registry speaks,
//! authentication (challenge → credentials or token → retry), capped body
//! reads and the registry's error bodies.
//!
//! One [`Client`] serves a whole daemon: its connection pool, scheme
//! choices and bearer tokens are shared by every pull and push.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tracing::debug;

use crate::auth::{Challenge, Credential, Credentials, TokenResponse, parse_challenge};
use crate::error::{RegistryError, Result};

/// How long without a byte before a transfer is given up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a [`Client`] is set up.
#[derive(Debug, Default)]
pub struct ClientOptions {
    /// Registries (`host[:port]`; a bare host matches every port) reached
    /// over plain HTTP when HTTPS fails, as Docker's `--insecure-registry`.
    /// Loopback registries (localhost, 127.0.0.0/8, ::1) always are.
    pub insecure: Vec<String>,
    pub credentials: Credentials,
}

/// A registry client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// For insecure registries only: HTTPS with any certificate.
    http_any_cert: reqwest::Client,
    insecure: Vec<String>,
    credentials: Credentials,
    schemes: Mutex<HashMap<String, &'static str>>,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
    basic: Mutex<HashSet<String>>,
}

/// What a request needs the registry to allow: `repository:<name>:<actions>`
/// scopes for a bearer token.
#[derive(Debug, Clone)]
pub struct Scope(pub Vec<String>);

impl Scope {
    pub fn pull(repo: &str) -> Scope {
        Scope(vec![format!("repository:{repo}:pull")])
    }
    pub fn push(repo: &str) -> Scope {
        Scope(vec![format!("repository:{repo}:pull,push")])
    }
    pub fn and_pull(mut self, repo: &str) -> Scope {
        self.0.push(format!("repository:{repo}:pull"));
        self
    }
    fn key(&self) -> String {
        self.0.join(" ")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Redirects as Go's client (and so Docker) follows them, up to 10, but
/// never from HTTPS down to HTTP. reqwest itself drops `Authorization` when
/// a redirect leaves the host or port, so credentials never follow a blob
/// to a storage backend.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("stopped after 10 redirects");
        }
        let from_https = attempt.previous().last().is_some_and(|u| u.scheme() == "https");
        if from_https && attempt.url().scheme() != "https" {
            return attempt.error("refusing a redirect from https to plain http");
        }
        attempt.follow()
    })
}

/// Loopback registries are insecure by default, as in Docker (127.0.0.0/8).
fn is_loopback(host: &str) -> bool {
    let h = host_only(host);
    h == "localhost" || h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let build = |any_cert: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("layerd/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                .redirect(redirect_policy())
                .danger_accept_invalid_certs(any_cert)
                .build()
                .map_err(|e| RegistryError::Internal(format!("building the http client: {e}")))
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: build(false)?,
                http_any_cert: build(true)?,
                insecure: opts.insecure,
                credentials: opts.credentials,
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                basic: Mutex::default(),
            }),
        })
    }

    fn is_insecure(&self, host: &str) -> bool {
        is_loopback(host) || self.inner.insecure.iter().any(|i| i == host || (!i.contains(':') && i == host_only(host)))
    }

    fn http_for(&self, host: &str) -> &reqwest::Client {
        if self.is_insecure(host) { &self.inner.http_any_cert } else { &self.inner.http }
    }

    /// `https://host` or, for an insecure registry where HTTPS fails,
    /// `http://host`; decided once per registry.
    pub async fn base(&self, host: &str) -> Result<String> {
        let host = api_host(host);
        if let Some(s) = lock(&self.inner.schemes).get(host) {
            return Ok(format!("{s}://{host}"));
        }
        let scheme = if self.is_insecure(host) {
            let probe = self.inner.http_any_cert.get(format!("https://{host}/v2/")).timeout(Duration::from_secs(10));
            match probe.send().await {
                Ok(_) => "https",
                Err(e) => {
                    debug!(registry = host, error = %e, "https failed; insecure registry, using plain http");
                    "http"
                }
            }
        } else {
            "https"
        };
        lock(&self.inner.schemes).insert(host.to_owned(), scheme);
        Ok(format!("{scheme}://{host}"))
    }

    /// Send a request (made by `make` from the base URL and the client),
    /// authenticating on a 401 challenge and sending once more. `make` may
    /// be called twice, so it must not carry a one-shot body.
    pub async fn send(
        &self,
        host: &str,
        scope: &Scope,
        make: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Response> {
        let base = self.base(host).await?;
        let http = self.http_for(api_host(host));
        let mut req = make(http, &base);
        if let Some(h) = self.cached_auth(host, scope)? {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| unreachable(host, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let header = self.authenticate(host, scope, &resp).await?;
        let resp = make(http, &base).header(AUTHORIZATION, header).send().await.map_err(|e| unreachable(host, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let why = error_text(resp).await;
            return Err(RegistryError::Unauthorized(format!("{host} refused our credentials: {why}")));
        }
        Ok(resp)
    }

    /// Send a request with a body that can't be replayed: auth must already
    /// be settled (a bodiless request of the same scope went first).
    pub async fn send_once(&self, host: &str, scope: &Scope, req: RequestBuilder) -> Result<Response> {
        let req = match self.cached_auth(host, scope)? {
            Some(h) => req.header(AUTHORIZATION, h),
            None => req,
        };
        let resp = req.send().await.map_err(|e| unreachable(host, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let why = error_text(resp).await;
            return Err(RegistryError::Unauthorized(format!("{host}: {why}")));
        }
        Ok(resp)
    }

    /// The client for absolute URLs a registry hands out (upload locations).
    pub fn http(&self, host: &str) -> &reqwest::Client {
        self.http_for(api_host(host))
    }

    fn cached_auth(&self, host: &str, scope: &Scope) -> Result<Option<HeaderValue>> {
        let token = {
            let tokens = lock(&self.inner.tokens);
            tokens.get(&(host.to_owned(), scope.key())).filter(|(_, exp)| *exp > Instant::now()).map(|(t, _)| t.clone())
        };
        if let Some(t) = token {
            return header(&format!("Bearer {t}")).map(Some);
        }
        if lock(&self.inner.basic).contains(host) {
            let cred = self.credential(host)?;
            return cred.map(|c| header(&c.basic_header())).transpose();
        }
        Ok(None)
    }

    fn credential(&self, host: &str) -> Result<Option<Credential>> {
        self.inner.credentials.lookup(host)
    }

    /// Answer a 401's challenge: the header to send from now on.
    async fn authenticate(&self, host: &str, scope: &Scope, resp: &Response) -> Result<HeaderValue> {
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge)
            .ok_or_else(|| {
                RegistryError::Unauthorized(format!("{host} asks for authentication but sent no usable challenge"))
            })?;
        let cred = self.credential(host)?;
        match challenge {
            Challenge::Basic => {
                let c = cred.ok_or_else(|| {
                    RegistryError::Unauthorized(format!("{host} needs a login and the docker config has none for it"))
                })?;
                lock(&self.inner.basic).insert(host.to_owned());
                header(&c.basic_header())
            }
            Challenge::Bearer { realm, service, .. } => {
                let token = self.fetch_token(host, &realm, service.as_deref(), scope, cred.as_ref()).await?;
                header(&format!("Bearer {token}"))
            }
        }
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
        cred: Option<&Credential>,
    ) -> Result<String> {
        let url = reqwest::Url::parse(realm)
            .map_err(|e| RegistryError::BadResponse(format!("{host}: token realm {realm:?} is not a URL: {e}")))?;
        if url.scheme() != "https" && !self.is_insecure(host) {
            return Err(RegistryError::BadResponse(format!("{host}: refusing a token realm over plain http: {realm}")));
        }
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            params.push(("service", s));
        }
        for s in &scope.0 {
            params.push(("scope", s));
        }
        let mut req = self.http_for(api_host(host)).get(url).query(&params);
        if let Some(c) = cred {
            req = req.header(AUTHORIZATION, header(&c.basic_header())?);
        }
        let resp = req.send().await.map_err(|e| unreachable(host, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let why = error_text(resp).await;
            return Err(RegistryError::Unauthorized(format!("{host}: token endpoint answered {status}: {why}")));
        }
        let body = read_capped(resp, 1 << 20, "token").await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::BadResponse(format!("{host}: malformed token answer: {e}")))?;
        let ttl = parsed.expires_in.unwrap_or(60).max(10);
        let token = parsed
            .into_token()
            .ok_or_else(|| RegistryError::BadResponse(format!("{host}: token answer holds no token")))?;
        // Renew a little early so a token never expires mid-request.
        let exp = Instant::now() + Duration::from_secs(ttl.saturating_sub(5));
        lock(&self.inner.tokens).insert((host.to_owned(), scope.key()), (token.clone(), exp));
        Ok(token)
    }
}

/// Docker Hub's API lives at another host than its name.
pub fn api_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    }
}

fn header(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v)
        .map_err(|_| RegistryError::InvalidArgument("credential holds bytes not allowed in a header".into()))
}

fn unreachable(host: &str, e: reqwest::Error) -> RegistryError {
    // reqwest's Display hides the cause chain; name the innermost cause.
    let mut why = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    if e.is_redirect() {
        return RegistryError::BadResponse(format!("{host}: {why}"));
    }
    RegistryError::Unreachable { registry: host.to_owned(), why }
}

/// Read a whole body, failing once it passes `cap` bytes.
pub async fn read_capped(resp: Response, cap: u64, what: &str) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(RegistryError::BadResponse(format!("{what} is larger than the {cap}-byte limit")));
    }
    let mut out = BytesMut::new();
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, body.next())
            .await
            .map_err(|_| RegistryError::BadResponse(format!("{what}: no data for {}s", IDLE_TIMEOUT.as_secs())))?;
        match next {
            None => return Ok(out.freeze()),
            Some(Err(e)) => return Err(RegistryError::BadResponse(format!("reading {what}: {e}"))),
            Some(Ok(chunk)) => {
                if out.len() as u64 + chunk.len() as u64 > cap {
                    return Err(RegistryError::BadResponse(format!("{what} is larger than the {cap}-byte limit")));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// The registry's own words about a failure (`{"errors":[{"code","message"}]}`),
/// else the start of the body.
pub async fn error_text(resp: Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = resp.status();
    let body = read_capped(resp, 64 * 1024, "error body").await.unwrap_or_default();
    if let Ok(e) = serde_json::from_slice::<Errors>(&body)
        && !e.errors.is_empty()
    {
        return e.errors.iter().map(|i| format!("{}: {}", i.code, i.message)).collect::<Vec<_>>().join("; ");
    }
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    if text.trim().is_empty() { status.to_string() } else { format!("{status}: {}", text.trim()) }
}

/// Turn a non-success status into the matching error.
pub async fn check_status(resp: Response, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let why = error_text(resp).await;
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound(format!("{what}: {why}")),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized(format!("{what}: {why}")),
        _ => RegistryError::BadResponse(format!("{what}: registry answered {why}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_are_insecure() {
        let c =
            Client::new(ClientOptions { insecure: vec!["reg.lan:5000".into(), "other".into()], ..Default::default() })
                .unwrap();
        for h in ["localhost:5000", "127.0.0.1:5000", "127.9.9.9", "[::1]:5000", "reg.lan:5000", "other:1234"] {
            assert!(c.is_insecure(h), "{h}");
        }
        for h in ["reg.lan:5001", "docker.io", "10.0.0.1:5000", "example.com"] {
            assert!(!c.is_insecure(h), "{h}");
        }
    }
}
