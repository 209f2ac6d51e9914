//! `GET /v1/openapi.json`: the API's OpenAPI 3 document.
//!
//! The document is written by hand and checked in (`daemon/openapi.json`);
//! it cannot drift because the tests below hold it against the route table
//! that builds the router ([`routes`](super::routes::routes)) and against
//! the JSON the server's types actually serialize to.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use graphdriver::{Change, ChangeKind};
    use layer::{ChainId, CheckOpts, CheckReport, DiffId, LayerInfo, Problem, RwInfo, RwName, StoreInfo};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Map, Value, json};

    use registry::Progress;

    use super::DOCUMENT;
    use crate::api::{
        BulkDeleteRequest, BulkDeleteResponse, BulkDeleteResult, CreateRwRequest, DeletedResponse, ErrorBody,
        MountResponse, PullRequest, PushRequest, PushResult, TagRequest,
    };
    use crate::server::routes::routes;
    use images::archive::{LoadReport, LoadedImage};
    use images::{ImageId, ImageInfo, ManifestInfo, RemoveReport};

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is not JSON")
    }

    /// Follow a local `$ref`, if `v` is one.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
                resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}")))
            }
            None => v,
        }
    }

    /// (METHOD, path template, operation) of every documented operation.
    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (key, op) in item.as_object().expect("path item") {
                if METHODS.contains(&key.as_str()) {
                    out.push((key.to_uppercase(), path.clone(), op));
                } else {
                    assert_eq!(key, "parameters", "{path}: unexpected key {key}");
                }
            }
        }
        out
    }

    #[test]
    fn the_document_and_the_router_have_the_same_operations() {
        let doc = doc();
        let documented: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
        let routed: BTreeSet<(String, String)> =
            routes().iter().map(|r| (r.verb.as_str().to_owned(), r.path.to_owned())).collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
        assert_eq!(routes().len(), routed.len(), "a route is listed twice");
    }

    /// Every `POST` and `DELETE` the router serves takes `Idempotency-Key`
    /// (the middleware applies to all of them) and documents its 422.
    #[test]
    fn every_mutating_route_documents_the_idempotency_key() {
        let doc = doc();
        for r in routes().iter().filter(|r| matches!(r.verb.as_str(), "POST" | "DELETE")) {
            let op = &doc["paths"][r.path][r.verb.as_str().to_lowercase()];
            let params: Vec<&Value> =
                op["parameters"].as_array().into_iter().flatten().map(|p| resolve(&doc, p)).collect();
            assert!(
                params.iter().any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key"),
                "{} {}: Idempotency-Key undocumented",
                r.verb.as_str(),
                r.path
            );
            assert!(op["responses"].get("422").is_some(), "{} {}: 422 undocumented", r.verb.as_str(), r.path);
            assert!(op["responses"].get("409").is_some(), "{} {}: 409 undocumented", r.verb.as_str(), r.path);
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(doc: &Value, v: &Value, schema_refs: &mut usize) {
            match v {
                Value::Object(m) => {
                    if m.contains_key("$ref") {
                        resolve(doc, v);
                        *schema_refs += 1;
                    }
                    m.values().for_each(|v| walk(doc, v, schema_refs));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(doc, v, schema_refs)),
                _ => {}
            }
        }
        let doc = doc();
        let mut schema_refs = 0;
        walk(&doc, &doc, &mut schema_refs);
        assert!(schema_refs > 50, "{schema_refs}");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    }

    #[test]
    fn path_parameters_are_declared_and_operations_described() {
        let doc = doc();
        let mut ids = BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let mut params: Vec<&Value> = doc["paths"][&path]["parameters"].as_array().into_iter().flatten().collect();
            params.extend(op["parameters"].as_array().into_iter().flatten());
            let declared: BTreeSet<&str> = params
                .iter()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], json!(true), "{method} {path}: path parameters are required");
                    p["name"].as_str().unwrap()
                })
                .collect();
            let in_template: BTreeSet<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(declared, in_template, "{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} used twice");
            assert!(op["summary"].is_string(), "{method} {path}: no summary");
        }
    }

    #[test]
    fn every_error_response_is_the_message_schema() {
        let doc = doc();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success response");
            assert!(responses.contains_key("500"), "{method} {path}: 500 undocumented");
            assert!(responses.contains_key("401"), "{method} {path}: 401 (TCP without token) undocumented");
            for (status, resp) in responses {
                let code: u16 = status.parse().unwrap_or_else(|_| panic!("{method} {path}: status {status}"));
                let resp = resolve(&doc, resp);
                assert!(resp["description"].is_string(), "{method} {path} {status}: no description");
                if code >= 400 {
                    let schema = &resp["content"]["application/json"]["schema"];
                    assert_eq!(schema["$ref"], json!("#/components/schemas/Error"), "{method} {path} {status}");
                }
            }
        }
    }

    /// Object keys of `v`.
    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    fn to_json<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    fn parses<T: DeserializeOwned>(v: Value) -> Result<(), String> {
        serde_json::from_value::<T>(v).map(drop).map_err(|e| e.to_string())
    }

    enum Role {
        /// The server sends it: `required` = the keys always present.
        Response,
        /// The server reads it: `required` = the keys it cannot do without.
        Request(fn(Value) -> Result<(), String>),
    }

    /// A schema's JSON with every optional field set, and with none set.
    struct Sample {
        schema: &'static str,
        full: Value,
        minimal: Value,
        role: Role,
    }

    fn samples() -> Vec<Sample> {
        let hex = "0123456789abcdef".repeat(4);
        let chain = ChainId::parse(&format!("sha256:{hex}")).unwrap();
        let diff = DiffId::parse(&format!("sha256:{hex}")).unwrap();
        let name = RwName::parse("web").unwrap();
        let layer = |parent: Option<ChainId>| LayerInfo {
            chain_id: chain.clone(),
            diff_id: diff.clone(),
            parent,
            size: 1,
            chain_size: 2,
            depth: 2,
            cache_id: hex.clone(),
            references: 1,
            leases: 0,
            children: 0,
            rw_layers: 0,
        };
        let rw = |full: bool| RwInfo {
            name: name.clone(),
            parent: full.then(|| chain.clone()),
            mount_id: hex.clone(),
            init_id: full.then(|| format!("{hex}-init")),
            mount_count: 1,
            mount_path: full.then(|| PathBuf::from("/m")),
        };
        let store = StoreInfo {
            root: "/var/lib/layerd".into(),
            driver: "vfs".into(),
            driver_status: vec![("Backing Filesystem".into(), "extfs".into())],
            layers: 1,
            rw_layers: 1,
            layers_size: 10,
        };
        let problem =
            Problem { kind: "orphaned_driver_dir".into(), subject: hex.clone(), detail: "x".into(), repaired: true };
        let report = CheckReport { layers_checked: 1, rw_layers_checked: 0, problems: vec![problem.clone()] };
        let result = |error: Option<String>| BulkDeleteResult { name: "web".into(), ok: error.is_none(), error };
        let create = |parent: Option<String>| CreateRwRequest { name: "web".into(), parent, init: true };
        let same = |schema, v: Value, role| Sample { schema, full: v.clone(), minimal: v, role };
        let id = ImageId::of_config(b"{}");
        let manifest = || ManifestInfo { media_type: "m".into(), digest: chain.digest().clone(), size: 1 };
        let image = |full: bool| ImageInfo {
            id: id.clone(),
            names: vec!["docker.io/library/a:latest".into()],
            chain_id: full.then(|| chain.clone()),
            diff_ids: vec![diff.clone()],
            size: 1,
            created: full.then(|| "2024-01-01T00:00:00Z".into()),
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: full.then(|| "v8".into()),
            manifest: full.then(manifest),
            registry_digest: full.then(|| chain.digest().clone()),
        };
        let load = LoadReport {
            images: vec![LoadedImage { id: id.clone(), names: vec!["a".into()] }],
            layers_registered: 1,
            layers_existing: 0,
            bytes_spooled: 0,
        };
        vec![
            same("Error", to_json(&ErrorBody { message: "no".into(), kind: Some("not_found".into()) }), Role::Response),
            Sample {
                schema: "LayerInfo",
                full: to_json(&layer(Some(chain.clone()))),
                minimal: to_json(&layer(None)),
                role: Role::Response,
            },
            Sample { schema: "RwInfo", full: to_json(&rw(true)), minimal: to_json(&rw(false)), role: Role::Response },
            same("StoreInfo", to_json(&store), Role::Response),
            same(
                "CheckOpts",
                to_json(&CheckOpts { repair: true, verify_content: true }),
                Role::Request(parses::<CheckOpts>),
            ),
            same("Problem", to_json(&problem), Role::Response),
            same("CheckReport", to_json(&report), Role::Response),
            Sample {
                schema: "CreateRwRequest",
                full: to_json(&create(Some(chain.to_string()))),
                minimal: to_json(&create(None)),
                role: Role::Request(parses::<CreateRwRequest>),
            },
            same("MountResponse", to_json(&MountResponse { path: "/m".into() }), Role::Response),
            same("DeletedResponse", to_json(&DeletedResponse { deleted: vec![chain.to_string()] }), Role::Response),
            same(
                "BulkDeleteRequest",
                to_json(&BulkDeleteRequest { names: vec!["web".into()] }),
                Role::Request(parses::<BulkDeleteRequest>),
            ),
            same("BulkDeleteResponse", to_json(&BulkDeleteResponse { results: vec![result(None)] }), Role::Response),
            Sample {
                schema: "BulkDeleteResult",
                full: to_json(&result(Some("no such rw layer".into()))),
                minimal: to_json(&result(None)),
                role: Role::Response,
            },
            same("Change", to_json(&Change { path: "/a".into(), kind: ChangeKind::Add }), Role::Response),
            Sample {
                schema: "PullRequest",
                full: to_json(&PullRequest { reference: "busybox".into(), platform: Some("linux/amd64".into()) }),
                minimal: to_json(&PullRequest { reference: "busybox".into(), platform: None }),
                role: Role::Request(parses::<PullRequest>),
            },
            same(
                "PushRequest",
                to_json(&PushRequest { reference: "h:5000/a:v1".into() }),
                Role::Request(parses::<PushRequest>),
            ),
            Sample {
                schema: "Progress",
                full: to_json(&Progress {
                    id: "0123456789ab".into(),
                    status: "Downloading".into(),
                    current: Some(1),
                    total: Some(2),
                }),
                minimal: to_json(&Progress {
                    id: "0123456789ab".into(),
                    status: "Waiting".into(),
                    current: None,
                    total: None,
                }),
                role: Role::Response,
            },
            // `image` is an ImageInfo; its own schema is sampled with the image routes.
            same("PullResult", json!({"image": {}, "digest": chain.to_string()}), Role::Response),
            same("PushResult", to_json(&PushResult { digest: chain.to_string(), size: 527 }), Role::Response),
            Sample {
                schema: "ImageInfo",
                full: to_json(&image(true)),
                minimal: to_json(&image(false)),
                role: Role::Response,
            },
            same("ManifestInfo", to_json(&manifest()), Role::Response),
            same(
                "RemoveReport",
                to_json(&RemoveReport {
                    untagged: vec!["a".into()],
                    deleted: vec![id.clone()],
                    layers_deleted: vec![chain.clone()],
                }),
                Role::Response,
            ),
            same("LoadReport", to_json(&load), Role::Response),
            same("LoadedImage", to_json(&load.images[0]), Role::Response),
            same(
                "TagRequest",
                to_json(&TagRequest { source: "a".into(), target: "b".into() }),
                Role::Request(parses::<TagRequest>),
            ),
        ]
    }

    #[test]
    fn schemas_match_the_json_the_server_emits() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let objects: BTreeMap<&String, &Value> = schemas.iter().filter(|(_, s)| s["type"] == "object").collect();
        let samples = samples();
        let sampled: BTreeSet<&str> = samples.iter().map(|s| s.schema).collect();
        let documented: BTreeSet<&str> = objects.keys().map(|k| k.as_str()).collect();
        assert_eq!(documented, sampled, "every object schema needs a sample here, and every sample a schema");
        for s in &samples {
            let schema = objects[&s.schema.to_owned()];
            let properties = keys(&schema["properties"]);
            let required: BTreeSet<String> =
                schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
            assert_eq!(properties, keys(&s.full), "{}: properties vs the serialized JSON", s.schema);
            assert!(required.is_subset(&properties), "{}: required names an unknown property", s.schema);
            match s.role {
                Role::Response => {
                    assert_eq!(required, keys(&s.minimal), "{}: required vs the keys always sent", s.schema);
                }
                Role::Request(parse) => {
                    let only_required: Map<String, Value> = s
                        .full
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter(|(k, _)| required.contains(*k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    parse(Value::Object(only_required.clone()))
                        .unwrap_or_else(|e| panic!("{}: the required keys alone are refused: {e}", s.schema));
                    for key in &required {
                        let mut without = only_required.clone();
                        without.remove(key);
                        assert!(parse(Value::Object(without)).is_err(), "{}: {key} is not really required", s.schema);
                    }
                }
            }
        }
    }

    #[test]
    fn enums_match_the_serialized_variants() {
        let doc = doc();
        let documented = &doc["components"]["schemas"]["Change"]["properties"]["kind"]["enum"];
        let kinds: Vec<Value> = [ChangeKind::Add, ChangeKind::Modify, ChangeKind::Delete].iter().map(to_json).collect();
        assert_eq!(documented, &Value::Array(kinds));
    }
}
