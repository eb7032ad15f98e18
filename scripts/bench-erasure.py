#!/usr/bin/env python3
"""Erasure coding against replication, end to end: six `p2pfs serve` nodes
on 127.0.0.1 and one client home, in the same run:

  * push of new random data with `--erasure 4+2` and with `--replicas 3`:
    seconds, MB/s, chunk bytes sent to peers (the push's own count) and
    bytes stored on the nodes (chunk files, all nodes);
  * the same push again, unchanged (dedup: nothing is sent);
  * pull of each version;
  * CPU seconds per GiB of push and pull (client and nodes together: on a
    machine with few cores, they share them, and CPU decides the speed).

    cargo build --release && python3 scripts/bench-erasure.py [--size-mib 256] [--runs 3] [--tmpfs]

Each run pushes fresh data (so no run dedups against another); every figure
is the median of --runs runs. MB/s are decimal megabytes per second of the
file's size. --tmpfs puts the homes on /dev/shm, taking the disk out;
`--bin PATH` picks the binary (default: $CARGO_TARGET_DIR or target, then
release/p2pfs). A benchmark, not a test: it asserts nothing but that the
pulled bytes are the pushed ones.
"""

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
NODES = 6


def env_for(home):
    env = dict(os.environ, P2PFS_HOME=home)
    env.pop("RUST_LOG", None)
    return env


def run(binary, home, *args, cwd=None):
    out = subprocess.run([binary, *args], env=env_for(home), capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        sys.exit(f"p2pfs {' '.join(args)} failed:\n{out.stderr}")
    return out


def wait_for(what, condition, limit=120.0):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting until {what}")
        time.sleep(0.05)


class Server:
    def __init__(self, binary, home, bootstrap, options):
        self.home = home
        cmd = [binary, "serve", "--listen", "127.0.0.1:0", *options]
        for peer in bootstrap:
            cmd += ["--bootstrap", peer]
        self.proc = subprocess.Popen(cmd, env=env_for(home), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        info_path = os.path.join(home, "serve.json")

        def started():
            try:
                with open(info_path) as f:
                    self.info = json.load(f)
                return self.info["pid"] == self.proc.pid
            except (OSError, ValueError, KeyError):
                return False

        wait_for("the node writes serve.json", started)
        self.id = self.info["node"]
        self.node_addr = f"{self.id}@{self.info['addrs'][0]}"

    def stored(self):
        total = 0
        for dirpath, _, files in os.walk(os.path.join(self.home, "store", "chunks")):
            total += sum(os.path.getsize(os.path.join(dirpath, name)) for name in files)
        return total

    def verified(self):
        try:
            with open(os.path.join(self.home, "peers.json")) as f:
                table = json.load(f)
        except (OSError, ValueError):
            return set()
        return {p["node"] for p in table.get("peers", []) if p.get("addrs")}


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(servers):
    """CPU seconds (user + system) the nodes and this script's children have used so far."""
    total = 0.0
    for s in servers:
        with open(f"/proc/{s.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + children.ru_utime + children.ru_stime


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument("--bin", default=os.path.join(TARGET, "release", "p2pfs"))
    args = parser.parse_args()
    binary = args.bin
    size = args.size_mib << 20
    base = tempfile.mkdtemp(prefix="p2pfs-erasure-", dir="/dev/shm" if args.tmpfs else None)
    servers = []
    quiet = ["--repair-interval", "1h", "--unreachable-after", "1h", "--scrub-interval", "24h"]
    try:
        homes = [os.path.join(base, f"node{i}") for i in range(NODES)]
        run(binary, homes[0], "init", "-q")
        servers.append(Server(binary, homes[0], [], quiet))
        token = run(binary, homes[0], "invite").stdout.strip()
        for home in homes[1:]:
            run(binary, home, "init", "-q", "--join", token)
            servers.append(Server(binary, home, [s.node_addr for s in servers], quiet))
        wait_for("every node knows every other",
                 lambda: all({o.id for o in servers if o is not s} <= s.verified() for s in servers), 60)
        client = os.path.join(base, "client")
        run(binary, client, "init", "-q", "--join", token)
        work = os.path.join(base, "work")
        os.makedirs(work)

        modes = [("R=3", ["--replicas", "3"]), ("4+2", ["--erasure", "4+2"])]
        figures = {label: {"push": [], "again": [], "pull": [], "sent": [], "stored": [], "push_cpu": [], "pull_cpu": []}
                   for label, _ in modes}
        for i in range(args.runs):
            for label, flags in modes:
                data = os.path.join(work, "data.bin")
                write_random(data, size)
                name = f"{label}-{i}"
                before = sum(s.stored() for s in servers)
                started, cpu = time.monotonic(), cpu_seconds(servers)
                report = json.loads(run(binary, client, "push", "--json", "--name", name, *flags, data).stdout)
                figures[label]["push"].append(time.monotonic() - started)
                figures[label]["push_cpu"].append(cpu_seconds(servers) - cpu)
                figures[label]["stored"].append(sum(s.stored() for s in servers) - before)
                figures[label]["sent"].append(report["bytes_sent"])
                started = time.monotonic()
                again = json.loads(run(binary, client, "push", "--json", "--name", name, *flags, data).stdout)
                figures[label]["again"].append(time.monotonic() - started)
                assert again["unchanged"] and again["bytes_sent"] == 0, again
                out = os.path.join(work, "back.bin")
                started, cpu = time.monotonic(), cpu_seconds(servers)
                run(binary, client, "pull", "-q", name, "-o", out)
                figures[label]["pull"].append(time.monotonic() - started)
                figures[label]["pull_cpu"].append(cpu_seconds(servers) - cpu)
                if not filecmp.cmp(data, out, shallow=False):
                    sys.exit(f"{name}: the pulled bytes differ")
                os.remove(out)
                os.remove(data)

        mb = size / 1e6
        print(f"{args.size_mib} MiB of random data, {NODES} nodes on 127.0.0.1"
              f"{' (tmpfs)' if args.tmpfs else ''}, medians of {args.runs} runs")
        gib = size / (1 << 30)
        print(f"{'':<6} {'push MB/s':>10} {'core-s/GiB':>11} {'re-push s':>10} {'pull MB/s':>10} {'core-s/GiB':>11} "
              f"{'sent MiB':>9} {'sent/size':>10} {'stored MiB':>11} {'stored/size':>12}")
        for label, _ in modes:
            f = {k: statistics.median(v) for k, v in figures[label].items()}
            print(f"{label:<6} {mb / f['push']:>10.1f} {f['push_cpu'] / gib:>11.2f} {f['again']:>10.2f} "
                  f"{mb / f['pull']:>10.1f} {f['pull_cpu'] / gib:>11.2f} "
                  f"{f['sent'] / (1 << 20):>9.0f} {f['sent'] / size:>10.2f} "
                  f"{f['stored'] / (1 << 20):>11.0f} {f['stored'] / size:>12.2f}")
        r3 = {k: statistics.median(v) for k, v in figures["R=3"].items()}
        ec = {k: statistics.median(v) for k, v in figures["4+2"].items()}
        print(f"4+2 against R=3: push {r3['push'] / ec['push']:.2f}x as fast, pull {r3['pull'] / ec['pull']:.2f}x, "
              f"{ec['sent'] / r3['sent']:.2f}x the bytes sent, {ec['stored'] / r3['stored']:.2f}x the bytes stored, "
              f"unchanged re-push {ec['again'] / r3['again']:.2f}x the time")
    finally:
        for s in servers:
            s.proc.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
