//! Credentials and authentication challenges.
//!
//! Credentials come from a Docker `config.json` (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`): `auths.<host>.auth` (base64 `user:pass`),
//! or a credential helper (`credHelpers.<host>`, else `credsStore`), run as
//! `docker-credential-<name> get` exactly as the docker CLI runs it. A
//! registry's `WWW-Authenticate` challenge says what to do with them: `Basic`
//! sends them with every request; `Bearer` trades them (or nothing, for
//! anonymous pulls) at the token endpoint for a token scoped to the
//! repositories and actions at hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::error::{RegistryError, Result};

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, even in a debug log.
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

impl Credential {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Where credentials are looked up: a parsed `config.json` (or none).
#[derive(Debug, Default)]
pub struct Credentials {
    file: ConfigFile,
}

/// The host part of an `auths` key: Docker accepts `host[:port]`,
/// `https://host[:port]/...` and Docker Hub's `https://index.docker.io/v1/`.
fn key_host(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Docker Hub's names for its one registry.
fn same_registry(a: &str, b: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

impl Credentials {
    /// No credentials at all: every pull anonymous.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// The default config file: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(Path::new(&dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
    }

    /// Read a config file; a missing file means no credentials, a malformed
    /// one is an error that names it.
    pub fn load(path: &Path) -> Result<Credentials> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::none()),
            Err(e) => return Err(RegistryError::InvalidArgument(format!("reading {}: {e}", path.display()))),
        };
        Self::parse(&bytes).map_err(|e| RegistryError::InvalidArgument(format!("{}: {e}", path.display())))
    }

    pub fn parse(bytes: &[u8]) -> std::result::Result<Credentials, String> {
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| format!("malformed docker config: {e}"))?;
        Ok(Credentials { file })
    }

    /// The credential for `host` (as written in an image reference, with its
    /// port), if the config has one.
    pub fn lookup(&self, host: &str) -> Result<Option<Credential>> {
        let helper = self
            .file
            .cred_helpers
            .iter()
            .find(|(k, _)| same_registry(key_host(k), host))
            .map(|(_, v)| v.as_str())
            .or(self.file.creds_store.as_deref());
        for (key, entry) in &self.file.auths {
            if !same_registry(key_host(key), host) {
                continue;
            }
            if let Some(c) = entry.credential(key)? {
                return Ok(Some(c));
            }
        }
        match helper {
            Some(name) => run_helper(name, host),
            None => Ok(None),
        }
    }
}

impl AuthEntry {
    fn credential(&self, key: &str) -> Result<Option<Credential>> {
        if let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || {
                RegistryError::InvalidArgument(format!("docker config: auths.{key}.auth is not base64 user:password"))
            };
            let raw = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credential { username: u.to_owned(), password: p.to_owned() }));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Ok(Some(Credential { username: u.clone(), password: p.clone() })),
            _ => Ok(None),
        }
    }
}

/// `docker-credential-<name> get`, the server on stdin, `{Username, Secret}`
/// on stdout. A helper that knows no credential for the host is not an error.
fn run_helper(name: &str, host: &str) -> Result<Option<Credential>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(RegistryError::InvalidArgument(format!("docker config: bad credential helper name {name:?}")));
    }
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RegistryError::InvalidArgument(format!("running credential helper {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RegistryError::InvalidArgument(format!("running credential helper {program}: {e}")))?;
    if !out.status.success() {
        // "credentials not found in native keychain": no credential, not a failure.
        return Ok(None);
    }
    let o: Out = serde_json::from_slice(&out.stdout)
        .map_err(|e| RegistryError::InvalidArgument(format!("credential helper {program}: malformed answer: {e}")))?;
    if o.username == "<token>" {
        // An identity token needs Docker's OAuth2 refresh flow, which we don't speak.
        return Err(RegistryError::Unsupported(format!(
            "credential helper {program} gave an identity token for {host}; log in with a password instead"
        )));
    }
    Ok(Some(Credential { username: o.username, password: o.secret }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parse a `WWW-Authenticate` value (RFC 7235: a scheme and
/// comma-separated `key=value` or `key="quoted value"` parameters).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.push((key.trim().to_owned(), val.trim().to_owned()));
    }
}

/// The token endpoint's answer (Docker's `token`, OAuth2's `access_token`).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<String> {
        self.token.or(self.access_token).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_like_docker() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a bearer challenge without realm is unusable");
        let c = parse_challenge(r#"bearer realm=http://h/t, scope="a:b:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer { realm: "http://h/t".into(), service: None, scope: Some("a:b:pull,push".into()) })
        );
    }

    #[test]
    fn config_auths_match_hosts_in_every_spelling() {
        let cfg = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "localhost:5000": {"auth": "dTpw"},
            "https://reg.example:8443": {"username": "a", "password": "b"}
        }}"#;
        let c = Credentials::parse(cfg).unwrap();
        let hub = c.lookup("docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("hub", "secret"));
        assert_eq!(c.lookup("localhost:5000").unwrap().unwrap().username, "u");
        assert_eq!(c.lookup("reg.example:8443").unwrap().unwrap().password, "b");
        assert_eq!(c.lookup("localhost:5001").unwrap(), None);
        assert!(!format!("{hub:?}").contains("secret"), "debug output leaks the password");
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        assert!(Credentials::parse(b"{").unwrap_err().contains("malformed docker config"));
        let c = Credentials::parse(br#"{"auths": {"h": {"auth": "!!"}}}"#).unwrap();
        let e = c.lookup("h").unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
    }
}
