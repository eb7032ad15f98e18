//! A new user's first hour, through the real binary: every rough edge a
//! first try found, held to what it should be.

mod common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, SMALL_CHUNKS, Server, client, random_bytes, wait_until};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn commands_other_than_init_and_push_never_create_a_home() {
    let node = Node::new();
    for args in [&["ls"][..], &["log"], &["status"], &["pull", "x.bin"], &["gc"], &["peers"], &["key", "export"]] {
        let stderr = node.fails(args, 1);
        assert!(stderr.contains("there is no p2pfs home") && stderr.contains("p2pfs init"), "{args:?}: {stderr}");
        assert!(!node.home.exists(), "`p2pfs {}` made a home", args.join(" "));
    }
    let file = node.write("a.txt", b"a");
    node.push(&file, &[]);
    assert!(node.home.join("keys/owner.key").is_file(), "push makes the home it needs");
}

#[test]
fn an_identical_push_records_nothing_unless_asked() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let file = node.write("same.bin", &random_bytes(300_000, 1));
    let first = node.push(&file, &[]);
    let out = node.run(&["push", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), first, "it prints the existing id");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("same.bin@1 is unchanged") && stderr.contains("--allow-same"), "{stderr}");
    let log: serde_json::Value = serde_json::from_str(&node.ok(&["log", "same.bin", "--json"])).unwrap();
    assert_eq!(log.as_array().unwrap().len(), 1, "no second version: {log}");

    let forced = node.push(&file, &["--allow-same"]);
    assert_ne!(forced, first);
    let log: serde_json::Value = serde_json::from_str(&node.ok(&["log", "same.bin", "--json"])).unwrap();
    assert_eq!(log.as_array().unwrap().len(), 2, "--allow-same records a version: {log}");
}

#[test]
fn a_push_of_another_file_under_the_same_name_warns() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    fs::create_dir(node.work.join("work")).unwrap();
    fs::create_dir(node.work.join("home")).unwrap();
    let a = node.write("work/config.yaml", b"a: 1\n");
    let b = node.write("home/config.yaml", b"b: 2\n");
    let out = node.run(&["push", a.to_str().unwrap()]);
    assert!(!stderr_of(&out).contains("warning"), "{}", stderr_of(&out));
    let out = node.run(&["push", a.to_str().unwrap()]);
    assert!(!stderr_of(&out).contains("warning"), "the same path again is no news: {}", stderr_of(&out));
    let out = node.run(&["push", b.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("warning") && stderr.contains("work/config.yaml") && stderr.contains("--name"), "{stderr}");
}

#[test]
fn summaries_count_in_english_and_rates_in_binary_units() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let file = node.write("tiny.txt", b"hello");
    let out = node.run(&["push", file.to_str().unwrap()]);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("in 1 chunk;") && stderr.contains("(1 chunk, 26 B stored)"), "{stderr}");
    assert!(stderr.contains("/s") && !stderr.contains("MB/s"), "{stderr}");
    let stderr = stderr_of(&node.run(&["pull", "tiny.txt", "-o", "back.txt"]));
    assert!(stderr.contains("1 verified chunk;") && !stderr.contains("MB/s"), "{stderr}");
    let status = node.ok(&["status"]);
    assert!(status.contains("of 1 name,") && status.contains("1 chunk,"), "{status}");
}

#[test]
fn a_short_hex_prefix_is_told_how_long_a_prefix_must_be() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let id = node.push(&node.write("p.txt", b"p"), &[]);
    let stderr = node.fails(&["pull", &id[..7]], 1);
    assert!(stderr.contains("8 or more hex digits"), "{stderr}");
    node.ok(&["pull", &id[..8], "-o", "by-prefix"]);
}

#[test]
fn replicas_on_a_home_without_peers_is_not_silently_ignored() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let out = node.run(&["push", node.write("r.txt", b"r").to_str().unwrap(), "--replicas", "5"]);
    assert!(out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--replicas 5 has no effect") && stderr.contains("no peers"), "{stderr}");
}

#[test]
fn tokens_and_tickets_catch_damage_and_forgive_whitespace() {
    let server = Server::start();
    let token = server.invite();
    assert!(token.starts_with("p2pfs-join2-"), "{token}");

    // One changed digit, anywhere: caught before anything is written.
    let mut changed = token.clone().into_bytes();
    let at = token.len() - 20;
    changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
    let fresh = Node::new();
    let stderr = fresh.fails(&["init", "--join", &String::from_utf8(changed).unwrap()], 1);
    assert!(stderr.contains("damaged or incomplete"), "{stderr}");
    assert!(!fresh.home.exists(), "a bad token leaves no home behind");
    let stderr = fresh.fails(&["init", "--join", &token[..token.len() - 6]], 1);
    assert!(stderr.contains("damaged or incomplete") && !stderr.contains("should start"), "{stderr}");
    let stderr = fresh.fails(&["init", "--join", "p2pfs-join1-00ff"], 1);
    assert!(stderr.contains("format version 1"), "{stderr}");

    // Wrapped by a mail client, with spaces around: it still reads.
    let wrapped: Vec<&str> = token.as_bytes().chunks(40).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let wrapped = format!("  {}\n", wrapped.join("\n"));
    let out = fresh.run_with_input(&["init", "--join", "-"], wrapped.as_bytes());
    assert!(out.status.success(), "{}", stderr_of(&out));

    let me = client(&token);
    let data = random_bytes(200_000, 7);
    me.push(&me.write("shared.bin", &data), &[]);
    let ticket = me.ok(&["share", "shared.bin"]).trim().to_owned();
    assert!(ticket.starts_with("p2pfs-share2-"), "{ticket}");
    let friend = client(&token);
    let spaced = format!("  {ticket} ");
    let out = friend.run(&["pull", &spaced, "-o", "-"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(out.stdout == data, "the ticket with spaces around pulls the file");

    // A changed key byte is the ticket's damage, not the store's.
    let mut bad = ticket.clone().into_bytes();
    let at = ticket.len() / 2;
    bad[at] = if bad[at] == b'a' { b'b' } else { b'a' };
    let stderr = friend.fails(&["pull", &String::from_utf8(bad).unwrap()], 1);
    assert!(stderr.contains("share ticket is damaged") && !stderr.contains("store"), "{stderr}");
    // A join token given to pull says what it is for.
    let stderr = friend.fails(&["pull", &token], 1);
    assert!(stderr.contains("that is a join token") && stderr.contains("init --join"), "{stderr}");
}

#[test]
fn log_lines_appear_only_when_asked_for_and_never_in_colour_on_a_file() {
    let a = Server::start();
    let token = a.invite();
    let mut b = Server::start_in(
        {
            let node = Node::new();
            node.ok(&["init", "--join", &token]);
            node
        },
        "127.0.0.1:0",
        &[&a.node_addr()],
    );
    let me = client(&token);
    let file = me.write("l.bin", &random_bytes(100_000, 3));
    me.push(&file, &[]);
    let b_id = b.id.clone();
    wait_until(Duration::from_secs(20), "the client knows b", || {
        fs::read_to_string(me.home.join("peers.json")).is_ok_and(|t| t.contains(&b_id))
    });
    b.kill();
    fs::write(&file, random_bytes(100_000, 4)).unwrap();
    let out = me.run(&["push", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("unreachable"), "the summary says which peer is down: {stderr}");
    assert!(!stderr.contains("WARN") && !stderr.contains('\u{1b}'), "no raw log lines by default: {stderr}");

    fs::write(&file, random_bytes(100_000, 5)).unwrap();
    let out = me.run(&["-q", "push", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(stderr_of(&out), "", "-q prints nothing but errors");

    fs::write(&file, random_bytes(100_000, 6)).unwrap();
    let out = me.run(&["-v", "push", file.to_str().unwrap()]);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("WARN") || stderr.contains("DEBUG"), "-v logs: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour when stderr is not a terminal: {stderr}");

    // Addresses read as people write them.
    assert!(!stderr.contains("::ffff:"), "{stderr}");
}

#[test]
fn peers_fails_when_no_known_peer_answers() {
    let mut server = Server::start();
    let me = client(&server.invite());
    let table = me.ok(&["peers"]);
    assert!(table.contains("live") && !table.contains("::ffff:"), "{table}");
    server.kill();
    let out = me.run(&["peers"]);
    assert_eq!(out.status.code(), Some(1), "every peer unreachable is a failure");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreachable"));
    assert!(stderr_of(&out).contains("no known peer answered (1 known)"), "{}", stderr_of(&out));
}

#[test]
fn serve_says_once_that_its_port_is_taken_and_accepts_host_names() {
    let server = Server::start();
    let other = Node::new();
    other.ok(&["init"]);
    let stderr = other.fails(&["serve", "--listen", &server.addr], 1);
    assert_eq!(stderr.matches("p2pfs: error").count(), 1, "one error: {stderr}");
    assert_eq!(stderr.matches("already in use").count(), 1, "its cause printed once: {stderr}");
    assert!(stderr.contains("is taken") && stderr.contains("--listen"), "{stderr}");

    let mut child = other
        .command()
        .args(["serve", "--listen", "localhost:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let serve_file = other.home.join("serve.json");
    wait_until(Duration::from_secs(20), "the node serves on localhost", || serve_file.exists());
    let info: serde_json::Value = serde_json::from_slice(&fs::read(&serve_file).unwrap()).unwrap();
    assert!(info["addrs"][0].as_str().unwrap().starts_with("127.0.0.1:"), "{info}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_bootstrapping_into_another_network_is_refused_with_the_steps() {
    let server = Server::start();
    let stranger = Node::new();
    stranger.ok(&["init"]);
    let stderr = stranger.fails(&["serve", "--listen", "127.0.0.1:0", "--bootstrap", &server.node_addr()], 1);
    assert!(stderr.contains("not of that node's network") && stderr.contains("init --join"), "{stderr}");
}

/// A push from a pipe that stays open until the returned writer is dropped.
fn push_in_progress(node: &Node, name: &str, first: &[u8]) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = node
        .command()
        .args(["push", "-", "--name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(first).unwrap();
    (child, stdin)
}

#[test]
fn readers_work_during_a_push_and_gc_waits_for_it_with_wait() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    node.push(&node.write("old.bin", &random_bytes(100_000, 8)), &[]);
    let data = random_bytes(4 << 20, 9);
    let (child, mut stdin) = push_in_progress(&node, "new.bin", &data[..2 << 20]);
    // The push has written chunks: it holds the home.
    wait_until(Duration::from_secs(20), "the push stores chunks", || node.chunk_files().len() > 10);

    let ls = node.ok(&["ls"]);
    assert!(ls.contains("old.bin"), "ls works while a push runs: {ls}");
    let out = node.run(&["pull", "old.bin", "-o", "-"]);
    assert!(out.status.success(), "pull works while a push runs: {}", stderr_of(&out));
    let stderr = node.fails(&["gc"], 1);
    assert!(stderr.contains("in use") && stderr.contains("--wait"), "{stderr}");

    // gc --wait starts now and must not delete the push's chunks under it.
    let gc = node.command().args(["gc", "--wait"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    stdin.write_all(&data[2 << 20..]).unwrap();
    drop(stdin);
    let pushed = child.wait_with_output().unwrap();
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    let gc = gc.wait_with_output().unwrap();
    assert!(gc.status.success(), "{}", stderr_of(&gc));
    assert!(stderr_of(&gc).contains("waiting"), "it said it waits: {}", stderr_of(&gc));
    let out = node.run(&["pull", "new.bin", "-o", "-"]);
    assert!(out.status.success() && out.stdout == data, "the push survived the waiting gc");
}

/// Pushes `a.bin` and `b.bin` (1 MiB each) at the same time; both must succeed.
fn push_a_and_b_at_once(node: &Node, seed: u64) {
    let (a, mut a_in) = push_in_progress(node, "a.bin", &random_bytes(1 << 20, seed));
    let (b, mut b_in) = push_in_progress(node, "b.bin", &random_bytes(1 << 20, seed + 1));
    a_in.write_all(b"end of a").unwrap();
    b_in.write_all(b"end of b").unwrap();
    drop((a_in, b_in));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
}

#[test]
fn two_pushes_at_once_both_become_versions() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    node.push(&node.write("seed.bin", b"seed"), &[]);
    push_a_and_b_at_once(&node, 10);
    let ls = node.ok(&["ls"]);
    assert!(ls.contains("a.bin") && ls.contains("b.bin") && ls.contains("seed.bin"), "no version lost: {ls}");
}

#[test]
fn ctrl_c_says_what_to_rerun() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let (child, stdin) = push_in_progress(&node, "big.bin", &random_bytes(1 << 20, 12));
    wait_until(Duration::from_secs(20), "the push stores chunks", || node.chunk_files().len() > 3);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("push interrupted") && stderr.contains("again"), "{stderr}");
    assert!(!node.ok(&["ls"]).contains("big.bin"), "nothing was recorded");

    // A pull into a pipe nobody reads blocks; Ctrl-C then says how to get it.
    node.push(&node.write("p.bin", &random_bytes(8 << 20, 13)), &[]);
    let mut pull = node
        .command()
        .args(["pull", "p.bin", "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(pull.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert!(Command::new("kill").args(["-INT", &pull.id().to_string()]).status().unwrap().success());
    let out = pull.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(stderr_of(&out).contains("pull interrupted"), "{}", stderr_of(&out));
}

#[test]
fn a_read_only_home_still_lists_logs_and_pulls() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let data = random_bytes(500_000, 14);
    node.push(&node.write("backup.bin", &data), &[]);
    let out_dir = tempfile::tempdir().unwrap();
    // A read-only bind mount of the home, in a mount namespace of its own
    // (root can write through any mode bits, but not through a read-only mount).
    let script = format!(
        "set -e; mount --bind {home} {home}; mount -o remount,bind,ro {home}; \
         touch {home}/probe 2>/dev/null && {{ echo 'the mount is writable'; exit 3; }}; \
         {bin} ls; {bin} log backup.bin; {bin} status; {bin} pull backup.bin -o {out}/back.bin",
        home = node.home.display(),
        bin = env!("CARGO_BIN_EXE_p2pfs"),
        out = out_dir.path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("P2PFS_HOME", &node.home)
        .output()
        .expect("unshare (util-linux) runs");
    assert!(
        out.status.success(),
        "this test needs root (CI runs as root) for a read-only mount: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("backup.bin"), "{stdout}");
    assert_eq!(fs::read(out_dir.path().join("back.bin")).unwrap(), data);
}

#[test]
fn a_network_push_rerun_after_ctrl_c_resumes_and_says_so() {
    let server = Server::start();
    let me = client(&server.invite());
    let data = random_bytes(6 << 20, 15);
    let (child, stdin) = push_in_progress(&me, "resume.bin", &data[..4 << 20]);
    wait_until(Duration::from_secs(30), "the node stores chunks", || server.node.chunk_files().len() > 20);
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", stderr_of(&out));
    // Every chunk in the journal was acked by the node before the interrupt.
    let journal = fs::read_dir(me.home.join("pushes")).unwrap().next().expect("a journal").unwrap().path();
    let journaled = fs::metadata(&journal).unwrap().len() / 32;
    assert!(journaled > 0, "the interrupted push journaled what was acked");

    let file = me.write("resume.bin", &data);
    let out = me.run(&["push", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("resumed an interrupted push"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (chunks, sent) = (report["chunks"].as_u64().unwrap(), report["chunks_stored"].as_u64().unwrap());
    assert!(chunks - sent >= journaled, "the {journaled} chunks acked before were not sent again: {report}");
    assert!(!journal.exists(), "the journal goes once the version is recorded");
    let back = me.run(&["pull", "resume.bin", "-o", "-"]);
    assert!(back.status.success() && back.stdout == data);
}

#[test]
fn two_pushes_at_once_to_a_served_home_both_become_versions() {
    let server = Server::start();
    let home = &server.node;
    home.set_chunker(SMALL_CHUNKS);
    push_a_and_b_at_once(home, 16);
    let ls = home.ok(&["ls"]);
    assert!(ls.contains("a.bin") && ls.contains("b.bin"), "no version lost: {ls}");
}

#[test]
fn pull_to_standard_output_shows_progress_on_a_terminal() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    node.push(&node.write("t.bin", &random_bytes(1 << 20, 18)), &[]);
    // `script` gives the command a terminal; stdout still goes to a pipe.
    let line = format!("{} pull t.bin -o - > /dev/null", env!("CARGO_BIN_EXE_p2pfs"));
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("P2PFS_HOME", &node.home)
        .current_dir(&node.work)
        .output()
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(terminal.contains("pull ["), "a progress bar on the terminal: {terminal:?}");
}

#[test]
fn an_rm_during_an_identical_push_makes_the_push_record_a_version() {
    let node = Node::with_chunks(SMALL_CHUNKS);
    let data = random_bytes(3 << 20, 19);
    node.push(&node.write("same.bin", &data), &["--name", "kept.bin"]);
    let (child, mut stdin) = push_in_progress(&node, "kept.bin", &data[..2 << 20]);
    // The pipe holds 64 KiB: the push has read its log and most of this.
    node.ok(&["rm", "kept.bin"]);
    stdin.write_all(&data[2 << 20..]).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("unchanged"), "the version it matched was removed: {}", stderr_of(&out));
    let back = node.run(&["pull", "kept.bin", "-o", "-"]);
    assert!(back.status.success() && back.stdout == data, "the pushed bytes are a live version");
}
