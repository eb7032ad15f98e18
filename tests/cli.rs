//! The command line as a user drives it: the real binary, a temp home.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Node, SMALL_CHUNKS, random_bytes};

#[test]
fn first_command_initialises_the_home_and_init_is_idempotent() {
    let node = Node::new();
    let file = node.write("hello.txt", b"hello, world\n");
    let out = node.run(&["push", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("initialised p2pfs home"));
    for key in ["node.key", "owner.key", "network.key"] {
        let mode = fs::metadata(node.home.join("keys").join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let owner_key = fs::read(node.home.join("keys/owner.key")).unwrap();
    let out = node.run(&["init"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing changed"));
    assert_eq!(fs::read(node.home.join("keys/owner.key")).unwrap(), owner_key);
}

#[test]
fn push_prints_only_the_manifest_id_and_pull_gives_the_same_bytes() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let data = random_bytes(3 << 20, 1);
    let file = node.write("data.bin", &data);
    let out = node.run(&["push", file.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.len(), 65, "stdout is the id and a newline: {stdout:?}");
    let id = stdout.trim();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pushed data.bin@1"), "{stderr}");

    fs::remove_file(&file).unwrap();
    node.ok(&["pull", id]);
    assert_eq!(fs::read(&file).unwrap(), data);
    node.ok(&["pull", &id[..8], "-o", "by-prefix"]);
    assert_eq!(fs::read(node.work.join("by-prefix")).unwrap(), data);
    node.ok(&["pull", "data.bin@1", "-o", "by-version"]);
    assert_eq!(fs::read(node.work.join("by-version")).unwrap(), data);
}

#[test]
fn pull_to_stdout_streams_the_file() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let data = random_bytes(1 << 20, 2);
    let file = node.write("s.bin", &data);
    node.push(&file, &[]);
    let out = node.run(&["pull", "s.bin", "-o", "-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
}

#[test]
fn push_reads_standard_input_under_a_given_name() {
    use std::io::Write;
    use std::process::Stdio;
    let node = Node::with_chunks(SMALL_CHUNKS);
    let data = random_bytes(700_000, 3);
    let mut child = node
        .command()
        .args(["push", "-", "--name", "piped.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let out = node.run(&["pull", "piped.bin", "-o", "-"]);
    assert_eq!(out.stdout, data);
    let stderr = node.fails(&["push", "-"], 1);
    assert!(stderr.contains("--name"), "{stderr}");
}

#[test]
fn an_empty_file_round_trips() {
    let node = Node::new();
    let file = node.write("empty", b"");
    node.push(&file, &["--name", "empty-file"]);
    node.ok(&["pull", "empty-file", "-o", "back"]);
    assert_eq!(fs::read(node.work.join("back")).unwrap(), b"");
}

#[test]
fn versions_are_listed_with_new_bytes_and_json() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let mut data = random_bytes(2 << 20, 4);
    let file = node.write("v.bin", &data);
    let first = node.push(&file, &[]);
    data[1 << 20] ^= 0xff;
    fs::write(&file, &data).unwrap();
    let second = node.push(&file, &[]);
    node.push(&node.write("other", b"x"), &[]);

    let log: serde_json::Value = serde_json::from_str(&node.ok(&["log", "v.bin", "--json"])).unwrap();
    let versions = log.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    // Newest first.
    assert_eq!(versions[0]["manifest"], second.as_str());
    assert_eq!(versions[1]["manifest"], first.as_str());
    assert_eq!(versions[1]["new_bytes"], 2 << 20);
    assert!(versions[0]["new_bytes"].as_u64().unwrap() <= 2 * 256 * 1024, "one edit re-stores a chunk or two");
    assert_eq!(versions[0]["size"], 2 << 20);

    let table = node.ok(&["log"]);
    assert!(table.contains("v.bin@1") && table.contains("v.bin@2") && table.contains("other@1"), "{table}");
    let ls: serde_json::Value = serde_json::from_str(&node.ok(&["ls", "--json"])).unwrap();
    let names: Vec<_> = ls.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["other", "v.bin"]);
    assert_eq!(ls[1]["versions"], 2);
}

#[test]
fn removing_a_version_keeps_the_others_and_gc_empties_the_store() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let v1 = random_bytes(1 << 20, 5);
    let mut v2 = v1.clone();
    v2.extend_from_slice(&random_bytes(1 << 20, 6));
    let file = node.write("f", &v1);
    node.push(&file, &[]);
    fs::write(&file, &v2).unwrap();
    node.push(&file, &[]);

    node.ok(&["rm", "f@1"]);
    node.ok(&["gc"]);
    node.ok(&["pull", "f", "-o", "latest"]);
    assert_eq!(fs::read(node.work.join("latest")).unwrap(), v2);
    let stderr = node.fails(&["pull", "f@1"], 1);
    assert!(stderr.contains("removed"), "{stderr}");

    node.ok(&["rm", "f"]);
    let report: serde_json::Value = serde_json::from_str(&node.ok(&["gc", "--json"])).unwrap();
    assert!(report["chunks_deleted"].as_u64().unwrap() > 0);
    assert!(node.chunk_files().is_empty(), "no chunk survives when no version needs it");
    assert!(node.manifest_files().is_empty());
    let status: serde_json::Value = serde_json::from_str(&node.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["stored_bytes"], 0);
    assert_eq!(status["live_versions"], 0);
}

#[test]
fn usage_errors_exit_2_and_operation_errors_exit_1() {
    let node = Node::new();
    node.fails(&["frobnicate"], 2);
    node.fails(&["push"], 2);

    let stderr = node.fails(&["push", "does-not-exist"], 1);
    assert!(stderr.contains("does-not-exist") && stderr.contains("No such file"), "{stderr}");
    let stderr = node.fails(&["push", node.work.to_str().unwrap()], 1);
    assert!(stderr.contains("is a directory"), "{stderr}");
    node.ok(&["init"]);
    let stderr = node.fails(&["pull", "nothing-here"], 1);
    assert!(stderr.contains("nothing-here") && stderr.contains("p2pfs ls"), "{stderr}");
    let stderr = node.fails(&["pull", &"ab".repeat(32)], 1);
    assert!(stderr.contains("not in the store"), "{stderr}");
}

#[test]
fn pull_refuses_to_overwrite_without_force() {
    let node = Node::new();
    let file = node.write("keep.txt", b"version one");
    node.push(&file, &[]);
    fs::write(&file, b"precious local edits").unwrap();
    let stderr = node.fails(&["pull", "keep.txt"], 1);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(fs::read(&file).unwrap(), b"precious local edits");
    node.ok(&["pull", "keep.txt", "--force"]);
    assert_eq!(fs::read(&file).unwrap(), b"version one");
}

#[test]
fn pull_into_a_directory_uses_the_stored_name() {
    let node = Node::new();
    let file = node.write("named.txt", b"abc");
    node.push(&file, &[]);
    fs::create_dir(node.work.join("outdir")).unwrap();
    node.ok(&["pull", "named.txt", "-o", "outdir"]);
    assert_eq!(fs::read(node.work.join("outdir/named.txt")).unwrap(), b"abc");
}

#[test]
fn a_group_readable_key_is_refused_with_the_fix() {
    let node = Node::new();
    node.ok(&["init"]);
    let key = node.home.join("keys/owner.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let stderr = node.fails(&["ls"], 1);
    assert!(stderr.contains("owner.key") && stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn quiet_silences_stderr_but_not_the_result() {
    let node = Node::new();
    let file = node.write("q", b"quiet please");
    let out = node.run(&["push", "-q", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 65);
}
