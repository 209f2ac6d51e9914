//! containerd's snapshotter testsuite (`core/snapshots/testsuite`), in
//! driver terms: each layer of a chain is edited in a read-write layer and
//! committed through `diff` → `create` → `apply_diff` ([`check_chain`]),
//! and compared with a flat directory at every step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};

use crate::harness::chain::check_chain;
use crate::harness::ops::{chown, dir, file, link, mv, rm};
use crate::harness::{CaseResult, Cx};

/// docker#21555: a file's content and mode change in an upper layer.
/// Repeated across a second boundary (coarse mtimes are the trap), with
/// the new content the same size as the old.
pub async fn layer_file_update(cx: Cx) -> CaseResult {
    let l1 = vec![
        dir("/etc", 0o700),
        file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        file("/etc/profile", b"PATH=/usr/bin", 0o666),
        dir("/root", 0o700),
        file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for run in 0..2 {
        check_chain(&cx, &format!("run{run}"), &[l1.clone(), l2.clone()]).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        tokio::time::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))).await;
    }
    Ok(())
}

/// docker#25244: a directory removed and recreated in an upper layer hides
/// everything the lower layer had in it (an opaque directory); a third
/// layer adds to it.
pub async fn remove_dir_in_lower_layer(cx: Cx) -> CaseResult {
    let l1 = vec![dir("/lib", 0o700), file("/lib/hidden", b"", 0o644)];
    let l2 = vec![rm("/lib"), dir("/lib", 0o700), file("/lib/not-hidden", b"", 0o644)];
    let l3 = vec![file("/lib/newfile", b"", 0o644)];
    check_chain(&cx, "chain", &[l1, l2, l3]).await.map(drop)
}

/// docker#20240/#24913/#28391: chown of nested directories and a file.
pub async fn chown_nested(cx: Cx) -> CaseResult {
    let l1 = vec![
        dir("/opt", 0o700),
        dir("/opt/a", 0o700),
        dir("/opt/a/b", 0o700),
        file("/opt/a/b/file.txt", b"hello", 0o644),
    ];
    let l2 =
        vec![chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1), chown("/opt/a/b/file.txt", 1, 1)];
    check_chain(&cx, "chain", &[l1, l2]).await.map(drop)
}

/// docker#27298: ownership across three layers with removal and recreation.
pub async fn dir_ownership_on_commit(cx: Cx) -> CaseResult {
    let l1 = vec![
        dir("/dir1", 0o700),
        dir("/dir2", 0o700),
        dir("/dir3", 0o700),
        dir("/dir4", 0o700),
        file("/dir4/f1", b"...", 0o644),
        dir("/dir5", 0o700),
        file("/dir5/f1", b"...", 0o644),
        chown("/dir1", 1, 1),
        chown("/dir2", 1, 1),
        chown("/dir3", 1, 1),
        chown("/dir5", 1, 1),
        chown("/dir5/f1", 1, 1),
    ];
    let l2 = vec![chown("/dir2", 0, 0), rm("/dir3"), chown("/dir4", 1, 1), chown("/dir4/f1", 1, 1)];
    let l3 = vec![dir("/dir3", 0o700), chown("/dir3", 1, 1), rm("/dir5"), dir("/dir5", 0o700), chown("/dir5", 1, 1)];
    check_chain(&cx, "chain", &[l1, l2, l3]).await.map(drop)
}

/// A file deleted in layer 2 stays deleted in layer 3 (whiteouts carry).
pub async fn deleted_file_stays_deleted(cx: Cx) -> CaseResult {
    let l1 = vec![file("/foo", b"foo\n", 0o777), file("/foobar", b"foobar\n", 0o777)];
    let l2 = vec![rm("/foobar")];
    let l3 = vec![];
    check_chain(&cx, "chain", &[l1, l2, l3]).await.map(drop)
}

/// Files moved out of a lower layer: a dir removed, a lower file hard-linked
/// to a new path and its original removed.
pub async fn move_file_from_lower_layer(cx: Cx) -> CaseResult {
    let l1 = vec![
        dir("/dir1", 0o700),
        file("/dir1/f1", b"Hello", 0o644),
        dir("/dir2", 0o700),
        file("/dir2/f2", b"...", 0o644),
    ];
    let l2 = vec![
        dir("/dir3", 0o700),
        file("/dir3/f1", b"Hello", 0o644),
        rm("/dir1"),
        link("/dir2/f2", "/dir3/f2"),
        rm("/dir2/f2"),
    ];
    check_chain(&cx, "chain", &[l1, l2]).await.map(drop)
}

/// docker#25409: rename a directory from a lower layer, replace a file by
/// renaming another over it, rename a file. Where the kernel refuses a
/// directory rename across layers (`EXDEV`, overlayfs without
/// `redirect_dir`) the edit copies and removes, as `mv` does; the trees
/// must match either way.
pub async fn rename(cx: Cx) -> CaseResult {
    let l1 = vec![
        dir("/dir1", 0o700),
        file("/dir1/inside", b"moved with its dir", 0o640),
        dir("/somefiles", 0o700),
        file("/somefiles/f1", b"was here first!", 0o644),
        file("/somefiles/f2", b"nothing interesting", 0o644),
    ];
    let l2 = vec![
        mv("/dir1", "/dir2"),
        file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        mv("/somefiles/f1-overwrite", "/somefiles/f1"),
        mv("/somefiles/f2", "/somefiles/f3"),
    ];
    check_chain(&cx, "chain", &[l1, l2]).await.map(drop)
}

/// The root of a fresh layer is a 0755 directory owned by root, with and
/// without a parent, for `create` and `create_rw`.
pub async fn root_permission(cx: Cx) -> CaseResult {
    let parent = crate::harness::chain::committed_layer(&cx, "parent", None, vec![dir("/d", 0o700)]).await?;
    let rw = cx.create_rw("rw", None).await?;
    let ro = cx.create("ro", None).await?;
    let child_rw = cx.create_rw("child-rw", Some(&parent)).await?;
    let child_ro = cx.create("child-ro", Some(&parent)).await?;
    for (label, id) in [("rw", rw), ("ro", ro), ("child-rw", child_rw), ("child-ro", child_ro)] {
        let m = cx.manifest(&id).await?;
        let root = m.get("/").context("no root entry")?;
        ensure!(
            (root.kind, root.mode, root.uid, root.gid) == ('d', 0o755, 0, 0),
            "{label}: root is {root}, want d 0755 0:0"
        );
    }
    Ok(())
}

/// containerd's `128LayersMount`: 128 layers, each overwriting a file,
/// adding one, and removing and recreating a directory; every layer equals
/// the flat directory.
pub async fn layers_128(cx: Cx) -> CaseResult {
    let mut layers = vec![vec![
        file("/bottom", b"way at the bottom\n", 0o777),
        file("/overwriteme", b"FIRST!\n", 0o777),
        dir("/addhere", 0o755),
        dir("/onlyme", 0o755),
        file("/onlyme/bottom", b"bye!\n", 0o777),
    ]];
    for i in 1..128 {
        layers.push(vec![
            file("/overwriteme", format!("{i} WAS HERE!\n"), 0o777),
            file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
            rm("/onlyme"),
            dir("/onlyme", 0o755),
            file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
        ]);
    }
    check_chain(&cx, "chain", &layers).await.map(drop)
}
