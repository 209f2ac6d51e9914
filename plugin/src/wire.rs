//! The wire format of Docker's v1 graphdriver plugin protocol, as dockerd
//! 20.10 speaks it (`daemon/graphdriver/proxy.go`, `pkg/plugins/client.go`).
//!
//! Every call is `POST /<Method>` with a JSON body (no `Content-Type`) and
//! `Accept: application/vnd.docker.plugins.v1.2+json`. Field names are Go's
//! struct field names; Go's decoder matches them case-insensitively, so both
//! ends here read objects the same way ([`GoObject`]): an exact key first,
//! else any key equal to the field's name ignoring ASCII case.
//!
//! Errors are `{"Err": "..."}`. We add `"Kind"` (an
//! [`ErrorKind`](graphdriver::ErrorKind) name) so a layerd client gets the
//! error's class back; dockerd ignores the extra field.

use std::collections::BTreeMap;

use graphdriver::{Change, ChangeKind, DriverError, ErrorKind};
use serde_json::{Map, Value};

/// The media type dockerd sends in `Accept`; we answer with it too.
pub const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The only interface this crate implements and looks for.
pub const GRAPH_DRIVER: &str = "GraphDriver";

/// Longest JSON request body the server reads (dockerd's are tiny).
pub const MAX_REQUEST: usize = 1 << 20;

/// Longest JSON reply the client reads (a `Changes` list of a very large
/// layer is the biggest legitimate answer).
pub const MAX_REPLY: usize = 256 << 20;

/// Longest error message kept from a peer's error body.
pub const MAX_ERR: usize = 4096;

/// Our extension: list every id the driver holds (`{"Ids":[...]}`). dockerd
/// never calls it; the layerd client uses it for start-up reconciliation and
/// does without when a third-party plugin answers 404.
pub const IDS_METHOD: &str = "LayerdGraphDriver.Ids";

/// A reply or request that is not what the protocol allows.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// A JSON object read the way Go's `encoding/json` reads one into a struct.
#[derive(Debug, Default)]
pub struct GoObject(Map<String, Value>);

impl GoObject {
    /// Parse `bytes` as an object. An empty body (dockerd sends one for
    /// `Plugin.Activate`) and `null` read as the empty object.
    pub fn parse(bytes: &[u8]) -> Result<GoObject, WireError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(GoObject::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(GoObject(m)),
            Ok(Value::Null) => Ok(GoObject::default()),
            Ok(other) => Err(bad(format!("want a JSON object, got {}", kind_of(&other)))),
            Err(e) => Err(bad(format!("malformed JSON: {e}"))),
        }
    }

    fn from_value(v: &Value, what: &str) -> Result<GoObject, WireError> {
        match v {
            Value::Object(m) => Ok(GoObject(m.clone())),
            Value::Null => Ok(GoObject::default()),
            other => Err(bad(format!("{what}: want an object, got {}", kind_of(other)))),
        }
    }

    /// The value of field `name`: the exact key, else a key equal ignoring
    /// ASCII case. `null` reads as absent, as Go leaves the field zero.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let v = self.0.get(name).or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v));
        v.filter(|v| !v.is_null())
    }

    pub fn string(&self, name: &str) -> Result<String, WireError> {
        match self.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("field {name}: want a string, got {}", kind_of(other)))),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, WireError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(format!("field {name}: want a boolean, got {}", kind_of(other)))),
        }
    }

    /// A Go `int64`: an integer JSON number in range (Go refuses `1.5`,
    /// `1e20` and strings).
    pub fn i64(&self, name: &str) -> Result<i64, WireError> {
        match self.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(format!("field {name}: {n} is not an int64"))),
            Some(other) => Err(bad(format!("field {name}: want a number, got {}", kind_of(other)))),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, WireError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("field {name}: want strings, got {}", kind_of(other)))),
                })
                .collect(),
            Some(other) => Err(bad(format!("field {name}: want an array, got {}", kind_of(other)))),
        }
    }

    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>, WireError> {
        match self.get(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    // Go stores null as the zero value.
                    Value::Null => Ok((k.clone(), String::new())),
                    other => Err(bad(format!("field {name}.{k}: want a string, got {}", kind_of(other)))),
                })
                .collect(),
            Some(other) => Err(bad(format!("field {name}: want an object, got {}", kind_of(other)))),
        }
    }

    pub fn object(&self, name: &str) -> Result<GoObject, WireError> {
        match self.get(name) {
            None => Ok(GoObject::default()),
            Some(v) => GoObject::from_value(v, name),
        }
    }

    pub fn array(&self, name: &str) -> Result<Vec<Value>, WireError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(other) => Err(bad(format!("field {name}: want an array, got {}", kind_of(other)))),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `graphDriverRequest`: the body of every per-layer call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerRequest {
    pub id: String,
    pub parent: String,
    pub mount_label: String,
    pub storage_opt: BTreeMap<String, String>,
}

impl LayerRequest {
    pub fn parse(bytes: &[u8]) -> Result<LayerRequest, WireError> {
        let o = GoObject::parse(bytes)?;
        Ok(LayerRequest {
            id: o.string("ID")?,
            parent: o.string("Parent")?,
            mount_label: o.string("MountLabel")?,
            storage_opt: o.string_map("StorageOpt")?,
        })
    }

    /// Encoded as dockerd does: empty fields omitted, a trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.into(), Value::String(v.into()));
            }
        };
        put("ID", &self.id);
        put("Parent", &self.parent);
        put("MountLabel", &self.mount_label);
        if !self.storage_opt.is_empty() {
            let opts = self.storage_opt.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            m.insert("StorageOpt".into(), Value::Object(opts));
        }
        encode_object(m)
    }
}

/// One entry of `UIDMaps`/`GIDMaps` (moby's `idtools.IDMap`, snake_case tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub container_id: i64,
    pub host_id: i64,
    pub size: i64,
}

/// `graphDriverInitRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitRequest {
    pub home: String,
    pub opts: Vec<String>,
    pub uid_maps: Vec<IdMap>,
    pub gid_maps: Vec<IdMap>,
}

impl InitRequest {
    pub fn parse(bytes: &[u8]) -> Result<InitRequest, WireError> {
        let o = GoObject::parse(bytes)?;
        let maps = |name: &str| -> Result<Vec<IdMap>, WireError> {
            o.array(name)?
                .iter()
                .map(|v| {
                    let m = GoObject::from_value(v, name)?;
                    Ok(IdMap { container_id: m.i64("container_id")?, host_id: m.i64("host_id")?, size: m.i64("size")? })
                })
                .collect()
        };
        Ok(InitRequest {
            home: o.string("Home")?,
            opts: o.strings("Opts")?,
            uid_maps: maps("UIDMaps")?,
            gid_maps: maps("GIDMaps")?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let maps = |v: &[IdMap]| {
            Value::Array(
                v.iter()
                    .map(|m| serde_json::json!({"container_id": m.container_id, "host_id": m.host_id, "size": m.size}))
                    .collect(),
            )
        };
        let mut m = Map::new();
        m.insert("Home".into(), Value::String(self.home.clone()));
        m.insert("Opts".into(), Value::Array(self.opts.iter().cloned().map(Value::String).collect()));
        m.insert("UIDMaps".into(), maps(&self.uid_maps));
        m.insert("GIDMaps".into(), maps(&self.gid_maps));
        encode_object(m)
    }
}

/// A JSON object with Go's trailing newline.
pub fn encode_object(m: Map<String, Value>) -> Vec<u8> {
    let mut out = Value::Object(m).to_string().into_bytes();
    out.push(b'\n');
    out
}

/// `{"Err": message, "Kind": kind}`.
pub fn encode_error(kind: ErrorKind, message: &str) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("Err".into(), Value::String(message.into()));
    m.insert("Kind".into(), Value::String(kind.as_str().into()));
    encode_object(m)
}

/// The HTTP status our server answers an error of `kind` with. dockerd
/// shows any non-200 answer as `GraphDriver.<Method>: <Err>`.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidArgument => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => 409,
        ErrorKind::Unsupported => 501,
        ErrorKind::DataLoss | ErrorKind::Internal => 500,
    }
}

fn kind_from_name(s: &str) -> Option<ErrorKind> {
    Some(match s {
        "not_found" => ErrorKind::NotFound,
        "already_exists" => ErrorKind::AlreadyExists,
        "invalid_argument" => ErrorKind::InvalidArgument,
        "conflict" => ErrorKind::Conflict,
        "unsupported" => ErrorKind::Unsupported,
        "data_loss" => ErrorKind::DataLoss,
        "internal" => ErrorKind::Internal,
        _ => return None,
    })
}

/// Turn a peer's error (our `Kind`, else the HTTP status, else the message
/// Docker's own drivers use) back into a typed [`DriverError`]. `id` names
/// the layer the call was about, for the variants that carry one.
pub fn decode_error(status: u16, body: &[u8], method: &str, id: &str) -> DriverError {
    let obj = GoObject::parse(body).ok();
    let err = obj.as_ref().and_then(|o| o.string("Err").ok()).filter(|s| !s.is_empty());
    let kind = obj.as_ref().and_then(|o| o.string("Kind").ok()).and_then(|k| kind_from_name(&k));
    let message = match &err {
        Some(m) => truncate(m),
        None if status == 404 => format!("the plugin does not implement {method}"),
        None => format!("{method}: HTTP {status}: {}", truncate(&String::from_utf8_lossy(body))),
    };
    let kind = kind.unwrap_or_else(|| guess_kind(status, err.is_some(), &message));
    let subject = if id.is_empty() { method.to_string() } else { id.to_string() };
    match kind {
        ErrorKind::NotFound => DriverError::NotFound(format!("{subject}: {message}")),
        ErrorKind::AlreadyExists => DriverError::AlreadyExists(format!("{subject}: {message}")),
        ErrorKind::Conflict => DriverError::Busy { id: subject, why: message },
        ErrorKind::Unsupported => DriverError::Unsupported { driver: "plugin".into(), why: message },
        ErrorKind::InvalidArgument => DriverError::InvalidArgument(message),
        ErrorKind::DataLoss | ErrorKind::Internal => DriverError::Other(format!("plugin: {method}: {message}")),
    }
}

/// A third-party plugin sends only a message; read its class the way the
/// words Docker's drivers use suggest.
fn guess_kind(status: u16, has_err: bool, message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    match status {
        400 => ErrorKind::InvalidArgument,
        404 if !has_err => ErrorKind::Unsupported,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        501 => ErrorKind::Unsupported,
        _ if m.contains("no such") || m.contains("does not exist") || m.contains("not found") => ErrorKind::NotFound,
        _ if m.contains("already exists") => ErrorKind::AlreadyExists,
        _ if m.contains("device or resource busy") || m.contains("in use") => ErrorKind::Conflict,
        _ if m.contains("invalid") => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERR {
        return s.to_string();
    }
    let mut end = MAX_ERR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// moby's `archive.ChangeType`: 0 modified, 1 added, 2 deleted.
pub fn change_kind_code(kind: ChangeKind) -> i64 {
    match kind {
        ChangeKind::Modify => 0,
        ChangeKind::Add => 1,
        ChangeKind::Delete => 2,
    }
}

pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let list = changes.iter().map(|c| serde_json::json!({"Path": c.path, "Kind": change_kind_code(c.kind)})).collect();
    let mut m = Map::new();
    m.insert("Changes".into(), Value::Array(list));
    encode_object(m)
}

/// A `Changes` reply: every path absolute, every kind 0, 1 or 2.
pub fn decode_changes(o: &GoObject) -> Result<Vec<Change>, WireError> {
    o.array("Changes")?
        .iter()
        .map(|v| {
            let c = GoObject::from_value(v, "Changes")?;
            let path = c.string("Path")?;
            if !path.starts_with('/') || path.contains('\0') {
                return Err(bad(format!("change path {path:?} is not absolute")));
            }
            let kind = match c.i64("Kind")? {
                0 => ChangeKind::Modify,
                1 => ChangeKind::Add,
                2 => ChangeKind::Delete,
                k => return Err(bad(format!("change kind {k} of {path:?} is not 0, 1 or 2"))),
            };
            Ok(Change { path, kind })
        })
        .collect()
}

/// A `Size` reply: Go's `int64`, and never negative for a real size.
pub fn decode_size(o: &GoObject) -> Result<u64, WireError> {
    let n = o.i64("Size")?;
    u64::try_from(n).map_err(|_| bad(format!("negative size {n}")))
}

/// A `Status` reply: `[[key, value], ...]`.
pub fn decode_status(o: &GoObject) -> Result<Vec<(String, String)>, WireError> {
    o.array("Status")?
        .iter()
        .map(|pair| match pair {
            Value::Array(kv) if kv.len() == 2 => match (&kv[0], &kv[1]) {
                (Value::String(k), Value::String(v)) => Ok((k.clone(), v.clone())),
                _ => Err(bad("status pair is not two strings")),
            },
            _ => Err(bad("status entry is not a [key, value] pair")),
        })
        .collect()
}

pub fn encode_status(status: &[(String, String)]) -> Vec<u8> {
    let pairs = status.iter().map(|(k, v)| serde_json::json!([k, v])).collect();
    let mut m = Map::new();
    m.insert("Status".into(), Value::Array(pairs));
    encode_object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_dockerd_sends() {
        let r = LayerRequest::parse(
            br#"{"ID":"abc","Parent":"p","StorageOpt":{"size":"1G"}}
"#,
        )
        .unwrap();
        assert_eq!((r.id.as_str(), r.parent.as_str()), ("abc", "p"));
        assert_eq!(r.storage_opt["size"], "1G");
        let init = InitRequest::parse(
            br#"{"Home":"/d/x","Opts":["a=b"],"UIDMaps":[{"container_id":0,"host_id":1000,"size":1}],"GIDMaps":null}"#,
        )
        .unwrap();
        assert_eq!(init.home, "/d/x");
        assert_eq!(init.opts, ["a=b"]);
        assert_eq!(init.uid_maps, [IdMap { container_id: 0, host_id: 1000, size: 1 }]);
        assert!(init.gid_maps.is_empty());
        assert_eq!(InitRequest::parse(&init.encode()).unwrap(), init);
    }

    #[test]
    fn field_names_match_as_go_matches_them() {
        let o = GoObject::parse(br#"{"dir":"/a","EXISTS":true,"Size":3}"#).unwrap();
        assert_eq!(o.string("Dir").unwrap(), "/a");
        assert!(o.bool("Exists").unwrap());
        // The exact key wins over a case-folded one.
        let o = GoObject::parse(br#"{"dir":"/a","Dir":"/b"}"#).unwrap();
        assert_eq!(o.string("Dir").unwrap(), "/b");
        // Empty body and null are the empty object (Plugin.Activate).
        assert!(GoObject::parse(b"").unwrap().get("x").is_none());
        assert!(GoObject::parse(b"null").unwrap().get("x").is_none());
    }

    #[test]
    fn hostile_bodies_are_refused_not_misread() {
        for body in [
            &b"[1,2]"[..],
            b"\"s\"",
            b"{",
            b"{\"ID\":1}",
            b"{\"ID\":[\"a\"]}",
            b"{\"StorageOpt\":{\"a\":1}}",
            b"{\"StorageOpt\":\"x\"}",
            b"\xff\xfe",
        ] {
            assert!(LayerRequest::parse(body).is_err(), "{:?} accepted", String::from_utf8_lossy(body));
        }
        for body in [
            &br#"{"Size":-1}"#[..],
            br#"{"Size":1e20}"#,
            br#"{"Size":1.5}"#,
            br#"{"Size":"12"}"#,
            br#"{"Size":99999999999999999999}"#,
        ] {
            let o = GoObject::parse(body).unwrap();
            assert!(decode_size(&o).is_err(), "{:?} accepted", String::from_utf8_lossy(body));
        }
        for body in [
            &br#"{"Changes":[{"Path":"rel","Kind":0}]}"#[..],
            br#"{"Changes":[{"Path":"/a","Kind":3}]}"#,
            br#"{"Changes":[{"Path":"/a","Kind":-1}]}"#,
            br#"{"Changes":{"Path":"/a"}}"#,
            br#"{"Changes":[7]}"#,
        ] {
            let o = GoObject::parse(body).unwrap();
            assert!(decode_changes(&o).is_err(), "{:?} accepted", String::from_utf8_lossy(body));
        }
        for body in [&br#"{"Status":[["a"]]}"#[..], br#"{"Status":[[1,2]]}"#, br#"{"Status":"x"}"#] {
            let o = GoObject::parse(body).unwrap();
            assert!(decode_status(&o).is_err(), "{:?} accepted", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn changes_and_status_round_trip() {
        let changes = vec![
            Change { path: "/a".into(), kind: ChangeKind::Add },
            Change { path: "/b".into(), kind: ChangeKind::Modify },
            Change { path: "/c".into(), kind: ChangeKind::Delete },
        ];
        let body = encode_changes(&changes);
        assert!(String::from_utf8_lossy(&body).contains(r#""Kind":1"#));
        assert_eq!(decode_changes(&GoObject::parse(&body).unwrap()).unwrap(), changes);
        let status = vec![("Backing Filesystem".to_string(), "extfs".to_string())];
        assert_eq!(decode_status(&GoObject::parse(&encode_status(&status)).unwrap()).unwrap(), status);
    }

    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidArgument,
            ErrorKind::Conflict,
            ErrorKind::Unsupported,
            ErrorKind::Internal,
        ] {
            let e = decode_error(status_of(kind), &encode_error(kind, "boom"), "GraphDriver.Get", "x");
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains("boom"), "{e}");
        }
        // A third party's bare messages.
        let e = decode_error(500, br#"{"Err":"layer abc does not exist"}"#, "GraphDriver.Get", "abc");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = decode_error(404, b"404 page not found", "GraphDriver.Capabilities", "");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        // A huge error body is cut, not copied whole.
        let big = format!(r#"{{"Err":"{}"}}"#, "x".repeat(1 << 20));
        assert!(decode_error(500, big.as_bytes(), "GraphDriver.Get", "").to_string().len() < 2 * MAX_ERR);
    }
}
