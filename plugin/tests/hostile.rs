//! Both ends of the protocol against a hostile peer: the client against a
//! plugin that answers garbage, stalls, breaks off or is not there yet; the
//! server against requests dockerd would never send.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use graphdriver::{CacheId, CreateOpts, Driver, ErrorKind};
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use plugin::{Addr, ClientOptions, PluginDriver, PluginServer};

/// Serve `app` on a fresh socket; returns its path (the dir lives as long as
/// the runtime).
fn serve(app: Router) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("plh").tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("p.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (dir, sock)
}

fn opts(call: Duration) -> ClientOptions {
    ClientOptions { call_timeout: call, connect_timeout: Duration::from_secs(5), ..Default::default() }
}

/// A plugin that activates and initialises, and answers every other method
/// with `reply`.
fn fake(reply: fn(&str) -> Response) -> Router {
    Router::new().route(
        "/{method}",
        post(move |axum::extract::Path(m): axum::extract::Path<String>| async move {
            match m.as_str() {
                "Plugin.Activate" => r#"{"Implements":["GraphDriver"]}"#.into_response(),
                "GraphDriver.Init" => "{}".into_response(),
                other => reply(other),
            }
        }),
    )
}

async fn connect(sock: &Path, call: Duration) -> Arc<PluginDriver> {
    PluginDriver::connect_addr("h", Addr::Unix(sock.to_owned()), Path::new("/var/lib/x/h"), opts(call)).await.unwrap()
}

#[tokio::test]
async fn garbage_replies_are_errors_not_misreadings() {
    let id = CacheId::random();
    for (reply, what) in [
        ((|_: &str| "not json".into_response()) as fn(&str) -> Response, "not JSON"),
        (
            |_: &str| r#"{"Dir":"relative/path","Size":-5,"Changes":[{"Path":"x","Kind":9}]}"#.into_response(),
            "bad values",
        ),
        (|_: &str| r#"{"Dir":7,"Size":"1","Changes":"x","Metadata":[1]}"#.into_response(), "bad types"),
        (|_: &str| "[1,2,3]".into_response(), "an array"),
    ] {
        let (_dir, sock) = serve(fake(reply));
        let d = connect(&sock, Duration::from_secs(10)).await;
        assert!(d.get(&id, "").await.is_err(), "get accepted {what}");
        assert!(d.diff_size(&id, None).await.is_err(), "diff_size accepted {what}");
        assert!(d.changes(&id, None).await.is_err(), "changes accepted {what}");
        if what != "bad values" {
            assert!(d.metadata(&id).await.is_err(), "metadata accepted {what}");
        }
        assert!(!d.exists(&id).await, "exists said yes to {what}");
    }
}

#[tokio::test]
async fn error_replies_keep_their_class() {
    let (_dir, sock) = serve(fake(|m| match m {
        "GraphDriver.Get" => (hyper::StatusCode::OK, r#"{"Err":"layer does not exist"}"#).into_response(),
        "GraphDriver.Create" => {
            (hyper::StatusCode::INTERNAL_SERVER_ERROR, r#"{"Err":"id already exists"}"#).into_response()
        }
        "GraphDriver.Remove" => (hyper::StatusCode::INTERNAL_SERVER_ERROR, "plain text failure").into_response(),
        _ => hyper::StatusCode::NOT_FOUND.into_response(),
    }));
    let d = connect(&sock, Duration::from_secs(10)).await;
    let id = CacheId::random();
    assert_eq!(d.get(&id, "").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(d.create(&id, None, &CreateOpts::default()).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
    let e = d.remove(&id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.to_string().contains("plain text failure"), "{e}");
    // No Ids extension: nothing listed, nothing to collect.
    assert!(d.ids().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_huge_reply_is_refused_in_bounded_memory() {
    let (_dir, sock) = serve(fake(|_| {
        // 300 MiB of JSON string, streamed.
        let chunk = bytes::Bytes::from(vec![b'a'; 1 << 20]);
        let head = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"Dir\":\""))]);
        let body = futures_util::stream::iter((0..300).map(move |_| Ok(chunk.clone())));
        Body::from_stream(futures_util::StreamExt::chain(head, body)).into_response()
    }));
    let d = connect(&sock, Duration::from_secs(60)).await;
    let e = d.get(&CacheId::random(), "").await.unwrap_err();
    assert!(e.to_string().contains("over"), "{e}");
}

#[tokio::test]
async fn a_stalled_plugin_times_out() {
    let (_dir, sock) = serve(fake(|_| {
        let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        Body::from_stream(never).into_response()
    }));
    let d = connect(&sock, Duration::from_millis(500)).await;
    let start = Instant::now();
    let e = d.get(&CacheId::random(), "").await.unwrap_err();
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(30));
    // A Diff whose body stalls fails the reader instead of hanging it.
    let mut r = d.diff(&CacheId::random(), None).await.unwrap();
    let err = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
}

#[tokio::test]
async fn a_diff_that_breaks_off_is_an_error_not_a_short_tar() {
    let (_dir, sock) = serve(fake(|_| {
        let items = vec![Ok(bytes::Bytes::from(vec![0u8; 4096])), Err(std::io::Error::other("plugin died"))];
        Body::from_stream(futures_util::stream::iter(items)).into_response()
    }));
    let d = connect(&sock, Duration::from_secs(10)).await;
    // The break may surface before the head or while reading: never as EOF.
    let res = match d.diff(&CacheId::random(), None).await {
        Err(e) => Err(e.to_string()),
        Ok(mut r) => tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).map_err(|e| e.to_string())
        })
        .await
        .unwrap(),
    };
    assert!(res.is_err(), "a cut Diff read as a whole one: {res:?}");
}

#[tokio::test]
async fn a_plugin_that_is_not_there_yet_is_waited_for() {
    let dir = tempfile::Builder::new().prefix("plw").tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("late.sock");
    let late = sock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let listener = tokio::net::UnixListener::bind(&late).unwrap();
        axum::serve(listener, fake(|_| "{}".into_response())).await.unwrap();
    });
    let d = connect(&sock, Duration::from_secs(10)).await;
    d.put(&CacheId::random()).await.unwrap();
    // One that never comes is a clear "cannot reach" within the bound.
    let gone = dir.path().join("never.sock");
    let o = ClientOptions { connect_timeout: Duration::from_millis(300), ..Default::default() };
    let e = PluginDriver::connect_addr("n", Addr::Unix(gone), Path::new("/x"), o).await.unwrap_err();
    assert!(e.to_string().contains("cannot reach"), "{e}");
    // And one that is not a graph driver is refused.
    let (_d2, sock2) = serve(Router::new().route("/{m}", post(|| async { r#"{"Implements":["VolumeDriver"]}"# })));
    let e = PluginDriver::connect_addr("v", Addr::Unix(sock2), Path::new("/x"), opts(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

/// Raw requests to our server, as a hostile or confused client sends them.
async fn raw(sock: &Path, path: &str, body: Vec<u8>) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req =
        Request::post(path).header("host", "p").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_server_refuses_what_dockerd_never_sends() {
    let state = tempfile::tempdir().unwrap();
    let opener: plugin::Opener = Arc::new(|home: &Path, _opts: &[String]| drivers::registry::open_in("vfs", home));
    let server = PluginServer::new(opener, Some(state.path().join("state.json")));
    let (_dir, sock) = serve(plugin::router(server));
    // Before Init: per-layer calls say so.
    let id = CacheId::random().to_string();
    let (s, b) = raw(&sock, "/GraphDriver.Get", format!(r#"{{"ID":"{id}"}}"#).into_bytes()).await;
    assert_eq!(s, 409, "{b}");
    assert!(b.contains("not initialised"), "{b}");
    let (s, b) = raw(&sock, "/GraphDriver.Init", br#"{"Home":"relative"}"#.to_vec()).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = raw(
        &sock,
        "/GraphDriver.Init",
        br#"{"Home":"/tmp/x","UIDMaps":[{"container_id":0,"host_id":100000,"size":65536}]}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 501, "{b}");
    let home = state.path().join("home");
    let (s, b) =
        raw(&sock, "/GraphDriver.Init", format!(r#"{{"Home":{:?}}}"#, home.display().to_string()).into_bytes()).await;
    assert_eq!((s, b.trim()), (200, "{}"));
    for (path, body, want) in [
        ("/GraphDriver.Create", r#"{"ID":"../../etc"}"#.to_string(), 400),
        ("/GraphDriver.Create", r#"{"ID":5}"#.to_string(), 400),
        ("/GraphDriver.Create", "{not json".to_string(), 400),
        ("/GraphDriver.Create", format!(r#"{{"ID":"{id}","Parent":"x"}}"#), 400),
        ("/GraphDriver.Create", format!(r#"{{"ID":"{id}","Parent":"{}"}}"#, CacheId::random()), 404),
        ("/GraphDriver.Get", format!(r#"{{"ID":"{id}"}}"#), 404),
        ("/GraphDriver.Nope", format!(r#"{{"ID":"{id}"}}"#), 404),
        ("/GraphDriver.Create", format!(r#"{{"ID":"{id}","X":"{}"}}"#, "y".repeat(2 << 20)), 400),
        ("/GraphDriver.ApplyDiff?id=%zz", String::new(), 400),
        ("/GraphDriver.ApplyDiff?id=nothex", String::new(), 400),
    ] {
        let (s, b) = raw(&sock, path, body.into_bytes()).await;
        assert_eq!(s, want, "{path}: {b}");
        assert!(b.contains("\"Err\"") && b.contains("\"Kind\""), "{path}: {b}");
    }
    // A hostile tar through ApplyDiff: refused with the driver's reason, nothing outside the layer.
    let (s, _) = raw(&sock, "/GraphDriver.Create", format!(r#"{{"ID":"{id}"}}"#).into_bytes()).await;
    assert_eq!(s, 200);
    let (s, b) = raw(&sock, &format!("/GraphDriver.ApplyDiff?id={id}&parent="), hostile_tar()).await;
    assert_eq!(s, 400, "{b}");
    assert!(!state.path().join("escape").exists());
}

/// A tar whose member climbs out of the layer.
fn hostile_tar() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let name = b"../escape";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(b"bad");
    out.resize(1024, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_apply_diff_blocks_no_other_id() {
    let state = tempfile::tempdir().unwrap();
    let opener: plugin::Opener = Arc::new(|home: &Path, _opts: &[String]| drivers::registry::open_in("vfs", home));
    let server = PluginServer::new(opener, None);
    let (_dir, sock) = serve(plugin::router(server));
    let client = PluginDriver::connect_addr(
        "s",
        Addr::Unix(sock.clone()),
        &state.path().join("home"),
        opts(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    // Ten uploads that send half a header block and then nothing, as a
    // dockerd stuck on a slow registry would.
    let mut stuck = Vec::new();
    for _ in 0..10 {
        let id = CacheId::random();
        client.create(&id, None, &CreateOpts::default()).await.unwrap();
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let half = futures_util::stream::iter([Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'a'; 256],
        )))]);
        let body =
            http_body_util::StreamBody::new(futures_util::StreamExt::chain(half, futures_util::stream::pending()));
        let req =
            Request::post(format!("/GraphDriver.ApplyDiff?id={id}&parent=")).header("host", "p").body(body).unwrap();
        stuck.push(tokio::spawn(async move { sender.send_request(req).await }));
    }
    // Every other id goes on: 50 layers created, mounted, listed, removed.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let d = client.clone();
        tasks.push(tokio::spawn(async move {
            let id = CacheId::random();
            d.create(&id, None, &CreateOpts::default()).await.unwrap();
            d.get(&id, "").await.unwrap();
            d.put(&id).await.unwrap();
            d.remove(&id).await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.expect("a call waited behind a stalled upload").unwrap();
    }
    assert!(client.ids().await.unwrap().len() >= 10);
    assert!(stuck.iter().all(|t| !t.is_finished()), "a stalled upload was answered");
    eprintln!("50 create/get/put/remove cycles beside 10 stalled uploads: {:?}", start.elapsed());
    for t in stuck {
        t.abort();
    }
}

#[tokio::test]
async fn a_plugin_on_tcp_is_used_as_on_a_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            fake(|m| if m == "GraphDriver.Get" { r#"{"Dir":"/x/y"}"#.into_response() } else { "{}".into_response() }),
        )
        .await
        .unwrap()
    });
    let d = PluginDriver::connect_addr("t", Addr::Tcp(addr.to_string()), Path::new("/h"), opts(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(d.get(&CacheId::random(), "").await.unwrap(), PathBuf::from("/x/y"));
}
