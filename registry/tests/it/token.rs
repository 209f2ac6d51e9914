//! Bearer-token auth against a real distribution 2.8 configured with a
//! token service: the test is the token server (JWTs signed RS256 with a
//! throwaway key whose self-signed certificate the registry trusts).

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use base64::Engine;
use bytes::Bytes;
use registry::{PushImage, Reporter, reference};
use testkit::registry::{DistributionRegistry, unavailable};

use crate::support::*;

struct Issuer {
    key: ring::signature::RsaKeyPair,
    cert_der: Vec<u8>,
    /// (scope, Authorization) of every token request.
    seen: Mutex<Vec<(String, Option<String>)>>,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Issuer {
    fn token(&self, scopes: &[String]) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)]});
        let access: Vec<_> = scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({"iss": "test-issuer", "sub": "bob", "aud": "test-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", scopes.len()), "access": access});
        let signing = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        self.key.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, signing.as_bytes(), &mut sig).unwrap();
        format!("{signing}.{}", b64url(&sig))
    }
}

async fn token(
    State(iss): State<Arc<Issuer>>,
    Query(q): Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> axum::Json<serde_json::Value> {
    let scopes: Vec<String> = q.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    iss.seen.lock().unwrap().push((scopes.join(" "), auth));
    axum::Json(serde_json::json!({"token": iss.token(&scopes), "expires_in": 300}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_distribution_token_service_is_answered_with_scoped_tokens() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=token", "-days", "1"])
        .arg("-keyout")
        .arg(k.join("key.pem"))
        .arg("-out")
        .arg(k.join("cert.pem"))
        .output();
    if !ok.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: openssl could not make a key: {ok:?}");
        return;
    }
    let run = |args: &[&str]| assert!(Command::new("openssl").args(args).current_dir(k).status().unwrap().success());
    run(&["pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der"]);
    run(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
    let issuer = Arc::new(Issuer {
        key: ring::signature::RsaKeyPair::from_pkcs8(&std::fs::read(k.join("key.der")).unwrap()).unwrap(),
        cert_der: std::fs::read(k.join("cert.der")).unwrap(),
        seen: Mutex::default(),
    });
    let app = axum::Router::new().route("/token", axum::routing::get(token)).with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cert = k.join("cert.pem");
    let reg = DistributionRegistry::start_with(None, |_| {
        format!(
            "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            cert.display()
        )
    });

    let src = TestStore::new().await;
    let tars = layer_tars(2, "token");
    let top = register_chain(&src.store, &tars).await;
    let image = PushImage { config: Bytes::from(config_for(&tars, "amd64")), top_layer: top.clone() };
    let creds = format!(r#"{{"auths": {{"{}": {{"username": "bob", "password": "pw"}}}}}}"#, reg.host());
    let target = reference::parse(&format!("{}/team/app:v1", reg.host())).unwrap();
    src.registry(&creds)
        .push(&target, &image, &Reporter::none())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    let dst = TestStore::new().await;
    let pulled = dst.registry("{}").pull(&target, None, &Reporter::none()).await.unwrap();
    assert_eq!(pulled.top_layer, top);
    let seen = issuer.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(s, a)| s == "repository:team/app:pull,push" && a.as_deref() == Some("Basic Ym9iOnB3")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(s, a)| s == "repository:team/app:pull" && a.is_none()), "anonymous pull token: {seen:?}");
}
