//! Test trees: generation of mixed content and exact comparison (content, type, mode, mtime,
//! symlink target).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MB.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible, text-like bytes.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "backup", "restore", "wal", "segment", "pack", "chunk", "region", "drill", "\n", "policy",
        "42", "lsn",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = seed;
    while out.len() < len {
        i = i
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(words[(i >> 59) as usize % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// A tree of about `mb` MiB: random, text and zero files, empty files, nested dirs, a symlink,
/// unusual names (spaces, unicode, newline, leading dash, non-UTF-8), odd permissions.
pub fn make(root: &Path, mb: usize) {
    std::fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    let big = mb.saturating_sub(2).max(1) << 20;
    std::fs::write(root.join("random.bin"), noise(1, big / 2)).unwrap();
    std::fs::write(root.join("nested/log.txt"), text(2, big / 3)).unwrap();
    std::fs::write(root.join("nested/deeper/zeros.img"), vec![0u8; big / 6]).unwrap();
    for i in 0..50 {
        std::fs::write(
            root.join(format!("nested/deeper/deepest/small-{i:03}.cfg")),
            text(i, 100 + i as usize * 37),
        )
        .unwrap();
    }
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("nested/also-empty"), b"").unwrap();
    std::fs::write(root.join("with space and ünïcødé.txt"), b"names").unwrap();
    std::fs::write(root.join("new\nline"), b"newline in the name").unwrap();
    std::fs::write(root.join("-leading-dash"), b"dash").unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"not utf-8",
    )
    .unwrap();
    std::os::unix::fs::symlink("nested/log.txt", root.join("link-to-log")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let ro = root.join("read-only.txt");
    std::fs::File::create(&ro)
        .unwrap()
        .write_all(b"read only")
        .unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let exe = root.join("nested/run.sh");
    std::fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::create_dir(root.join("private")).unwrap();
    std::fs::write(root.join("private/secret"), b"s").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(root.join("empty-dir")).unwrap();
}

/// Every difference between two trees (empty when identical).
pub fn diff(a: &Path, b: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(a, b, Path::new(""), &mut out);
    out
}

fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn walk(a: &Path, b: &Path, rel: &Path, out: &mut Vec<String>) {
    let (ea, eb) = (entries(&a.join(rel)), entries(&b.join(rel)));
    if ea != eb {
        out.push(format!(
            "{}: entries differ: {ea:?} vs {eb:?}",
            rel.display()
        ));
        return;
    }
    for name in ea {
        let r = rel.join(&name);
        let (pa, pb) = (a.join(&r), b.join(&r));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        if ma.file_type() != mb.file_type() {
            out.push(format!("{}: type differs", r.display()));
            continue;
        }
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa).unwrap() != std::fs::read_link(&pb).unwrap() {
                out.push(format!("{}: symlink target differs", r.display()));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            out.push(format!(
                "{}: mode {:o} vs {:o}",
                r.display(),
                ma.mode() & 0o7777,
                mb.mode() & 0o7777
            ));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            out.push(format!("{}: mtime differs", r.display()));
        }
        if ma.is_dir() {
            walk(a, b, &r, out);
        } else if std::fs::read(&pa).unwrap() != std::fs::read(&pb).unwrap() {
            out.push(format!("{}: content differs", r.display()));
        }
    }
}
