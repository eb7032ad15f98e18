#!/usr/bin/env python3
"""What one dead peer costs a command: a client that knows one live node
and one dead peer (a NodeId at a port where nothing listens) pushes a small
file several times; the same pushes without the dead peer are the baseline.

    cargo build --release && python3 scripts/bench-dead-peer.py [--runs 5]

Reports the median wall time of: pushes without the dead peer; the first
push with it (it is dialled and fails: at most the 750 ms first-reply
timeout, in parallel with the live dial); and later pushes (it is in
backoff and not dialled at all).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "p2pfs")


def run(home, *args, check=True):
    env = dict(os.environ, P2PFS_HOME=home)
    env.pop("RUST_LOG", None)
    return subprocess.run([BIN, *args], env=env, check=check, capture_output=True, text=True)


def timed_push(home, path):
    started = time.monotonic()
    run(home, "push", "-q", path)
    return time.monotonic() - started


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node_home = os.path.join(tmp, "node")
        run(node_home, "init", "-q")
        port = free_port()
        node = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{port}"],
            env=dict(os.environ, P2PFS_HOME=node_home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not os.path.exists(os.path.join(node_home, "serve.json")):
                time.sleep(0.05)
            token = run(node_home, "invite").stdout.strip()
            data = os.path.join(tmp, "f.bin")
            with open(data, "wb") as f:
                f.write(os.urandom(64 * 1024))
            baseline, first, later = [], [], []
            for i in range(args.runs):
                home = os.path.join(tmp, f"client{i}")
                run(home, "init", "-q", "--join", token)
                baseline.append(timed_push(home, data))
                table_path = os.path.join(home, "peers.json")
                with open(table_path) as f:
                    table = json.load(f)
                table["peers"].append({"node": os.urandom(32).hex(), "addrs": [f"127.0.0.1:{free_port()}"]})
                with open(table_path, "w") as f:
                    json.dump(table, f)
                first.append(timed_push(home, data))
                later.append(statistics.median(timed_push(home, data) for _ in range(3)))
        finally:
            node.terminate()
            node.wait()
    ms = lambda xs: statistics.median(xs) * 1000
    print(f"push, live peer only:            {ms(baseline):7.1f} ms (median of {args.runs})")
    print(f"push, first with a dead peer:    {ms(first):7.1f} ms (+{ms(first) - ms(baseline):.1f} ms)")
    print(f"push, later (dead peer skipped): {ms(later):7.1f} ms (+{ms(later) - ms(baseline):.1f} ms)")


if __name__ == "__main__":
    main()
