#!/usr/bin/env python3
"""End-to-end local benchmark: push and pull through the real binary.

Usage:  python3 scripts/bench-local.py [--size-mib 1024] [--runs 3] [--dir DIR] [--rss-size-mib 4096]
                                      [--tar-dirs /usr/share] [--baseline-rev REV] [--only compression]

Builds the release binary, makes a file of random bytes, and measures, in the
same run so the figures compare:
  * baselines: `cp` of the file (an in-kernel copy), `dd bs=4M` (the same
    bytes through user space, as p2pfs must move them), `dd conv=fsync` (a
    durable write), and `restic backup` of the file (if installed; Debian
    package `restic`), each into DIR;
  * p2pfs push of new data (home in DIR: every chunk fsynced), push of the
    same file unchanged, push with 1 MiB overwritten in the middle, and pull;
  * the same push and pull with the home on tmpfs (/dev/shm), which shows the
    CPU pipeline without the disk;
  * peak RSS (from /usr/bin/time -v) of push and pull of a --rss-size-mib file;
  * compression: a tar of --tar-dirs (made now, from this machine's files)
    stored by p2pfs, by `zstd -3` and by `restic backup` (repository v2,
    --compression auto): stored bytes and throughput, each p2pfs push right
    beside a restic backup of the same tar;
  * with --baseline-rev (e.g. the commit before a change): that revision is
    built too, and pushes of the random data alternate between the two
    binaries (home on tmpfs and on disk), so "before" and "after" share the run.
Each figure is the median of --runs runs. MB/s are decimal megabytes/second.
This is a benchmark, not a test: it asserts nothing and the machine is noisy.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "p2pfs")


LAST_CPU = [0.0]


def run(cmd, env=None, stdout=subprocess.DEVNULL):
    """Runs cmd; returns (seconds, peak RSS in KiB). Its CPU seconds (user +
    system) are left in LAST_CPU[0]."""
    timed = ["/usr/bin/time", "-v"] + cmd
    start = time.perf_counter()
    proc = subprocess.run(timed, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    LAST_CPU[0] = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
                      for kind in ("User", "System"))
    return elapsed, rss


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n


def drop_file(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


class Results:
    def __init__(self, size):
        self.size = size
        self.rows = []

    def add(self, name, seconds, note=""):
        median = statistics.median(seconds)
        mbps = self.size / median / 1e6
        self.rows.append((name, median, mbps, note))
        print(f"  {name:<44} {median:7.2f} s  {mbps:7.0f} MB/s  {note}", flush=True)


def p2pfs_env(home):
    env = dict(os.environ)
    env["P2PFS_HOME"] = home
    env.pop("RUST_LOG", None)
    return env


def bench_p2pfs(results, label, home, data, edited, runs, out_dir):
    """Times push and pull, each run right beside the baseline it is judged
    against (this machine's page-cache and disk speed drift by several times
    within minutes), and reports medians and the median per-run ratio."""
    env = p2pfs_env(home)
    fresh, unchanged, edit, pull, durable, copy = [], [], [], [], [], []
    out = os.path.join(out_dir, "pulled.bin")
    for _ in range(runs):
        drop_file(home)
        subprocess.run([BIN, "init", "-q"], env=env, check=True)
        durable.append(run(["dd", f"if={data}", f"of={out}", "bs=4M", "conv=fsync"])[0])
        drop_file(out)
        fresh.append(run([BIN, "push", "-q", data, "--name", "f"], env)[0])
        unchanged.append(run([BIN, "push", "-q", data, "--name", "f"], env)[0])
        edit.append(run([BIN, "push", "-q", edited, "--name", "f"], env)[0])
        copy.append(run(["dd", f"if={data}", f"of={out}", "bs=4M"])[0])
        drop_file(out)
        pull.append(run([BIN, "pull", "-q", "f@1", "-o", out], env)[0])
        drop_file(out)
    ratio = lambda ours, base: statistics.median(b / o for o, b in zip(ours, base))
    results.add(f"p2pfs push, new data ({label})", fresh, f"{ratio(fresh, durable):.2f}x dd conv=fsync beside it")
    results.add(f"p2pfs push, unchanged ({label})", unchanged)
    results.add(f"p2pfs push, 1 MiB edited ({label})", edit)
    results.add(f"p2pfs pull ({label})", pull, f"{ratio(pull, copy):.2f}x dd bs=4M beside it")
    results.add(f"  beside it: dd bs=4M conv=fsync ({label})", durable)
    results.add(f"  beside it: dd bs=4M ({label})", copy)
    drop_file(home)


def tree_bytes(path):
    """Apparent size of every file under path."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def bench_compression(work, runs, tar_dirs):
    """Stored size and push speed on real files: p2pfs, zstd -3, restic."""
    tar = os.path.join(work, "files.tar")
    print(f"making a tar of {' '.join(tar_dirs)}", flush=True)
    subprocess.run(["tar", "-cf", tar, "--ignore-failed-read", "-C", "/"] + [d.lstrip("/") for d in tar_dirs],
                   check=False, stderr=subprocess.DEVNULL)
    size = os.path.getsize(tar)
    print(f"compression: a {size / 2**20:.0f} MiB tar; {runs} runs each, medians", flush=True)
    zstd_out = os.path.join(work, "files.tar.zst")
    zstd_s = [run(["zstd", "-3", "-q", "-f", "-T1", tar, "-o", zstd_out])[0] for _ in range(runs)]
    zstd_bytes = os.path.getsize(zstd_out)
    drop_file(zstd_out)

    home = os.path.join(work, "tar-home")
    env = p2pfs_env(home)
    repo = os.path.join(work, "restic-tar")
    renv = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo)
    have_restic = shutil.which("restic") is not None
    push_s, restic_s, ratios, stored, restic_bytes = [], [], [], 0, 0
    for _ in range(runs):
        drop_file(home)
        subprocess.run([BIN, "init", "-q"], env=env, check=True)
        seconds = run([BIN, "push", "-q", tar, "--name", "files.tar"], env)[0]
        push_s.append(seconds)
        store = os.path.join(home, "store")
        stored = tree_bytes(os.path.join(store, "chunks")) + tree_bytes(os.path.join(store, "manifests"))
        if have_restic:
            drop_file(repo)
            subprocess.run(["restic", "init", "-q", "--repository-version", "2"], env=renv, check=True,
                           stdout=subprocess.DEVNULL)
            r = run(["restic", "backup", "-q", "--compression", "auto", tar], renv)[0]
            restic_s.append(r)
            ratios.append(r / seconds)
            restic_bytes = tree_bytes(repo)
    drop_file(home)
    drop_file(repo)

    mb = lambda secs: size / statistics.median(secs) / 1e6
    print(f"  zstd -3 (one thread)        {zstd_bytes / 2**20:8.1f} MiB   {mb(zstd_s):6.0f} MB/s")
    if have_restic:
        print(f"  restic backup (auto)        {restic_bytes / 2**20:8.1f} MiB   {mb(restic_s):6.0f} MB/s")
    print(f"  p2pfs push (disk)           {stored / 2**20:8.1f} MiB   {mb(push_s):6.0f} MB/s   (chunk and manifest files)")
    print(f"  stored: p2pfs / zstd -3 = {stored / zstd_bytes:.3f}x", end="")
    if have_restic:
        print(f", p2pfs / restic = {stored / restic_bytes:.3f}x")
        print(f"  push throughput: p2pfs / restic backup = {statistics.median(ratios):.2f}x (median of per-run ratios)")
    else:
        print("\n  (restic not installed: apt-get install restic, to compare)")
    drop_file(tar)


def build_baseline(rev, work):
    """Builds `rev` in a worktree of its own; returns its binary."""
    tree = os.path.join(work, "baseline-tree")
    target = os.path.join(ROOT, "target", "bench-baseline")
    subprocess.run(["git", "worktree", "add", "-f", "--detach", tree, rev], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "p2pfs"], cwd=tree, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=target))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    return os.path.join(target, "release", "p2pfs")


def bench_before_after(baseline, data, size, runs, homes):
    """Push of random data by the baseline binary and this one, alternating."""
    for label, home in homes:
        times = {"before": [], "after": []}
        cpu = {"before": [], "after": []}
        again = {"before": [], "after": []}
        for _ in range(runs):
            for which, binary in (("before", baseline), ("after", BIN)):
                env = p2pfs_env(home)
                drop_file(home)
                subprocess.run([binary, "init", "-q"], env=env, check=True)
                times[which].append(run([binary, "push", "-q", data, "--name", "f"], env)[0])
                cpu[which].append(LAST_CPU[0] / (size / 2**30))
                again[which].append(run([binary, "push", "-q", data, "--name", "f"], env)[0])
                drop_file(home)
        before, after = (statistics.median(times[k]) for k in ("before", "after"))
        ratio = statistics.median(b / a for a, b in zip(times["after"], times["before"]))
        cpu_before, cpu_after = (statistics.median(cpu[k]) for k in ("before", "after"))
        print(f"  random data, {label}: before {size / before / 1e6:.0f} MB/s, after {size / after / 1e6:.0f} MB/s, "
              f"after/before throughput {ratio:.3f}x (median of per-run ratios); "
              f"CPU {cpu_before:.2f} -> {cpu_after:.2f} core-s per GiB", flush=True)
        a_before, a_after = (statistics.median(again[k]) for k in ("before", "after"))
        a_ratio = statistics.median(b / a for a, b in zip(again["after"], again["before"]))
        print(f"  unchanged re-push, {label}: before {a_before:.2f} s, after {a_after:.2f} s, "
              f"after/before throughput {a_ratio:.3f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-size-mib", type=int, default=4096)
    parser.add_argument("--dir", default=os.path.join(ROOT, "target", "bench"))
    parser.add_argument("--tar-dirs", nargs="+", default=["/usr/share"])
    parser.add_argument("--baseline-rev", help="a git revision to compare random-data pushes with")
    parser.add_argument("--only", choices=["compression", "before-after"], help="run one part only")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="p2pfs-bench-", dir=args.dir)
    size = args.size_mib << 20
    data = os.path.join(work, "data.bin")
    edited = os.path.join(work, "edited.bin")
    print(f"making {args.size_mib} MiB of random data in {work}", flush=True)
    write_random(data, size)
    shutil.copyfile(data, edited)
    with open(edited, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(1 << 20))

    if args.baseline_rev:
        print(f"building {args.baseline_rev} for comparison", flush=True)
        baseline = build_baseline(args.baseline_rev, work)
        print(f"random data pushed by {args.baseline_rev} (before) and this tree (after), {args.runs} runs:")
        homes = [("disk", os.path.join(work, "ab-home"))]
        if os.path.isdir("/dev/shm"):
            homes.insert(0, ("tmpfs", "/dev/shm/p2pfs-bench-ab"))
        bench_before_after(baseline, data, size, args.runs, homes)
    if args.only != "before-after":
        bench_compression(work, args.runs, args.tar_dirs)
    if args.only:
        shutil.rmtree(work)
        return

    results = Results(size)
    print(f"{args.runs} runs each, medians; {os.cpu_count()} cores", flush=True)

    copy, user_copy, durable, restic = [], [], [], []
    for _ in range(args.runs):
        target = os.path.join(work, "copy.bin")
        copy.append(run(["cp", data, target])[0])
        drop_file(target)
        user_copy.append(run(["dd", f"if={data}", f"of={target}", "bs=4M"])[0])
        drop_file(target)
        durable.append(run(["dd", f"if={data}", f"of={target}", "bs=4M", "conv=fsync"])[0])
        drop_file(target)
    results.add("baseline: cp (in-kernel copy_file_range)", copy)
    results.add("baseline: dd bs=4M (copy through user space)", user_copy)
    results.add("baseline: dd bs=4M conv=fsync (durable write)", durable)

    if shutil.which("restic"):
        for _ in range(args.runs):
            repo = os.path.join(work, "restic-repo")
            drop_file(repo)
            env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo)
            subprocess.run(["restic", "init", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
            restic.append(run(["restic", "backup", "-q", data], env)[0])
            drop_file(repo)
        results.add("restic backup, new data (disk)", restic)
    else:
        print("  (restic not installed: apt-get install restic, to compare)")

    bench_p2pfs(results, "disk", os.path.join(work, "home"), data, edited, args.runs, work)
    if os.path.isdir("/dev/shm"):
        bench_p2pfs(results, "tmpfs", "/dev/shm/p2pfs-bench-home", data, edited, args.runs, "/dev/shm")

    if restic:
        push = next(r for r in results.rows if r[0] == "p2pfs push, new data (disk)")
        ratio = statistics.median(restic) / push[1]
        print(f"  p2pfs push / restic backup throughput ratio: {ratio:.2f}x")

    if args.rss_size_mib:
        big = os.path.join(work, "rss.bin")
        print(f"peak RSS with a {args.rss_size_mib} MiB file:", flush=True)
        write_random(big, args.rss_size_mib << 20)
        home = os.path.join(work, "rss-home")
        env = p2pfs_env(home)
        subprocess.run([BIN, "init", "-q"], env=env, check=True)
        seconds, rss = run([BIN, "push", "-q", big, "--name", "big"], env)
        print(f"  push: {rss / 1024:.0f} MiB peak RSS ({(args.rss_size_mib << 20) / seconds / 1e6:.0f} MB/s)")
        drop_file(big)
        out = os.path.join(work, "rss-out.bin")
        seconds, rss = run([BIN, "pull", "-q", "big", "-o", out], env)
        print(f"  pull: {rss / 1024:.0f} MiB peak RSS ({(args.rss_size_mib << 20) / seconds / 1e6:.0f} MB/s)")
        drop_file(out)
        drop_file(home)

    shutil.rmtree(work)


if __name__ == "__main__":
    main()
