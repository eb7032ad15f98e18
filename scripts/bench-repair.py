#!/usr/bin/env python3
"""Repair time per GiB: three `p2pfs serve` nodes on 127.0.0.1, a push of
random data at R=2, one node wiped (the one holding the most chunks: killed,
its store deleted, started again empty), then the time until the network
has put back every chunk it held and `p2pfs check --replicas 2` exits 0.

    cargo build --release && python3 scripts/bench-repair.py [--size-mib 1024] [--repair-rate 32MiB] [--tmpfs]

The nodes run with `--repair-interval 1h` while the data is pushed and the
node wiped, so nothing repairs early; the two nodes that kept their copies
are then restarted with `--repair-interval 1s`, and the clock starts when
they are up. Reports the bytes the wiped node held, the seconds until it
holds them again, MiB/s and seconds per GiB, and how long `check` took.
`--bin PATH` picks the binary (default: $CARGO_TARGET_DIR or target, then
release/p2pfs). --tmpfs puts the homes on /dev/shm, taking the disk out.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def env_for(home):
    env = dict(os.environ, P2PFS_HOME=home)
    env.pop("RUST_LOG", None)
    return env


def run(binary, home, *args, check=True):
    out = subprocess.run([binary, *args], env=env_for(home), capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"p2pfs {' '.join(args)} failed:\n{out.stderr}")
    return out


def wait_for(what, condition, limit=120.0):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting until {what}")
        time.sleep(0.05)


class Server:
    def __init__(self, binary, home, listen, bootstrap, options):
        self.binary, self.home = binary, home
        cmd = [binary, "serve", "--listen", listen, *options]
        for peer in bootstrap:
            cmd += ["--bootstrap", peer]
        self.log = open(os.path.join(home, "serve.log"), "a")
        self.proc = subprocess.Popen(cmd, env=env_for(home), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        info_path = os.path.join(home, "serve.json")

        def started():
            try:
                with open(info_path) as f:
                    self.info = json.load(f)
                return self.info["pid"] == self.proc.pid
            except (OSError, ValueError, KeyError):
                return False

        wait_for("the node writes serve.json", started)
        self.addr = self.info["addrs"][0]
        self.id = self.info["node"]

    def node_addr(self):
        return f"{self.id}@{self.addr}"

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def chunks(self):
        out = {}
        for dirpath, _, files in os.walk(os.path.join(self.home, "store", "chunks")):
            for name in files:
                out[name] = os.path.getsize(os.path.join(dirpath, name))
        return out

    def verified(self):
        try:
            with open(os.path.join(self.home, "peers.json")) as f:
                table = json.load(f)
        except (OSError, ValueError):
            return set()
        return {p["node"] for p in table.get("peers", []) if p.get("addrs")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repair-rate", default="32MiB")
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument("--bin", default=os.path.join(TARGET, "release", "p2pfs"))
    args = parser.parse_args()
    binary = args.bin
    base = tempfile.mkdtemp(prefix="p2pfs-repair-", dir="/dev/shm" if args.tmpfs else None)
    servers = []
    try:
        quiet = ["--replicas", "2", "--repair-interval", "1h", "--unreachable-after", "1h",
                 "--repair-rate", args.repair_rate]
        fast = ["--replicas", "2", "--repair-interval", "1s", "--unreachable-after", "1h",
                "--repair-rate", args.repair_rate]
        homes = [os.path.join(base, f"node{i}") for i in range(3)]
        run(binary, homes[0], "init", "-q")
        servers.append(Server(binary, homes[0], "127.0.0.1:0", [], quiet))
        token = run(binary, homes[0], "invite").stdout.strip()
        for home in homes[1:]:
            run(binary, home, "init", "-q", "--join", token)
            servers.append(Server(binary, home, "127.0.0.1:0", [s.node_addr() for s in servers], quiet))
        wait_for("every node knows every other",
                 lambda: all({o.id for o in servers if o is not s} <= s.verified() for s in servers), 60)

        client = os.path.join(base, "client")
        run(binary, client, "init", "-q", "--join", token)
        data = os.path.join(base, "data.bin")
        with open(data, "wb") as f:
            left = args.size_mib << 20
            while left:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
        started = time.monotonic()
        run(binary, client, "push", "-q", "--replicas", "2", data)
        push_s = time.monotonic() - started
        os.remove(data)

        victim = max(servers, key=lambda s: len(s.chunks()))
        lost = victim.chunks()
        lost_bytes = sum(lost.values())
        victim.kill()
        shutil.rmtree(os.path.join(victim.home, "store"))
        servers.remove(victim)
        victim = Server(binary, victim.home, victim.addr, [], quiet)
        checked = run(binary, client, "check", "-q", "--replicas", "2", check=False)
        assert checked.returncode == 1, f"check finds the wiped node's chunks missing: {checked.stderr}"

        healers = []
        for s in servers:
            s.kill()
            healers.append(Server(binary, s.home, s.addr, [], fast))
        servers = healers + [victim]
        started = time.monotonic()
        wait_for("the wiped node holds every chunk it held before",
                 lambda: victim.chunks().keys() >= lost.keys(), 3600)
        repair_s = time.monotonic() - started
        started = time.monotonic()
        checked = run(binary, client, "check", "-q", "--replicas", "2", check=False)
        check_s = time.monotonic() - started
        if checked.returncode != 0:
            sys.exit(f"check still finds chunks under 2 replicas:\n{checked.stderr}")
        gib = lost_bytes / (1 << 30)
        print(f"pushed {args.size_mib} MiB at R=2 to 3 nodes in {push_s:.1f} s")
        print(f"wiped node held {len(lost)} chunks, {lost_bytes / (1 << 20):.0f} MiB")
        print(f"repaired in {repair_s:.1f} s: {lost_bytes / (1 << 20) / repair_s:.1f} MiB/s, "
              f"{repair_s / gib:.1f} s per GiB (--repair-rate {args.repair_rate})")
        print(f"check --replicas 2 of the healed network: {check_s:.2f} s")
    finally:
        for s in servers:
            s.proc.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
