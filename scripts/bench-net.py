#!/usr/bin/env python3
"""End-to-end loopback benchmark: push and pull 1 GiB of random data to one
`p2pfs serve` on 127.0.0.1 (two processes sharing this machine's cores), with
the tuned transport and with quinn's defaults, beside `rsync -e ssh` and
`scp -c aes128-gcm@openssh.com` of the same file, both ways, in the same run.

    cargo build --release --bins --examples && python3 scripts/bench-net.py [--size-mib 1024] [--runs 3] [--tmpfs]

`--bin-dir DIR` runs the binaries under DIR (DIR/p2pfs and
DIR/examples/quic_blast) instead of target/release, so that a build kept
aside can be measured against the current one on the same machine.

Every push goes to a fresh node, so all of its chunks travel. Reports the
median MB/s (10^6 bytes/s) and the peak RSS of client and node. Two ceilings
are measured in the same runs: the transport alone (examples/quic_blast: the
same QUIC, TLS and tuning carrying bulk bytes, nothing else) and a push to
the local store (chunking, hashing, sealing and writing, no network). It also
reports CPU seconds per GiB: of the networked push and pull (client and
node), and of the transport alone plus the same transfer to or from the local
store, a floor on what a networked one must spend; spread over every core,
each bounds the MB/s a transfer can reach. --tmpfs puts
homes and files on /dev/shm, taking the disk (and fsync) out of the figures.
Needs rsync, scp and sshd for the baselines (installs them with apt-get if
missing); both go over ssh to a private sshd on 127.0.0.1, rsync with its
default cipher, scp with AES-128-GCM (the cheapest where the CPU has AES
instructions), so each is a yardstick, not a tuned ceiling.
"""

import argparse
import json
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
BLAST = os.path.join(ROOT, "target", "release", "examples", "quic_blast")
SSH_PORT = "2222"


def run(cmd, env=None, **kw):
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, **kw)


def timed(cmd, env):
    """Wall seconds, peak RSS (KiB) and CPU seconds (user + system) of one command."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", out.stderr).group(1)) for kind in ("User", "System"))
    return elapsed, rss, cpu


def cpu_seconds(pid):
    """CPU seconds (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env_for(home, transport):
    env = dict(os.environ, P2PFS_HOME=home)
    env.pop("RUST_LOG", None)
    if transport == "default":
        env["P2PFS_TRANSPORT"] = "default"
    return env


def start_node(base, transport):
    home = tempfile.mkdtemp(dir=base, prefix="node-")
    env = env_for(home, transport)
    run([BIN, "init", "-q"], env)
    proc = subprocess.Popen([BIN, "serve", "-q", "--listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = os.path.join(home, "serve.json")
    deadline = time.time() + 20
    while True:
        try:
            info = json.load(open(serve))
            if info["pid"] == proc.pid:
                break
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            sys.exit("the node did not start")
        time.sleep(0.02)
    token = run([BIN, "invite"], env).stdout.strip()
    return proc, home, token


def node_peak_rss(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def stop_node(proc, home):
    proc.terminate()
    proc.wait()
    shutil.rmtree(home, ignore_errors=True)


def p2pfs_round(base, data, size, transport):
    proc, node_home, token = start_node(base, transport)
    client = tempfile.mkdtemp(dir=base, prefix="client-")
    env = env_for(client, transport)
    run([BIN, "init", "-q", "--join", token], env)
    node_before = cpu_seconds(proc.pid)
    push_s, push_rss, push_cpu = timed([BIN, "push", "-q", data], env)
    push_cpu += cpu_seconds(proc.pid) - node_before
    out = os.path.join(base, "pulled.bin")
    node_before = cpu_seconds(proc.pid)
    pull_s, pull_rss, pull_cpu = timed([BIN, "pull", "-q", "data.bin", "-o", out], env)
    pull_cpu += cpu_seconds(proc.pid) - node_before
    node_rss = node_peak_rss(proc)
    if os.path.getsize(out) != size:
        sys.exit("pulled file has the wrong size")
    os.remove(out)
    stop_node(proc, node_home)
    shutil.rmtree(client, ignore_errors=True)
    return size / push_s / 1e6, size / pull_s / 1e6, push_rss, pull_rss, node_rss, push_cpu, pull_cpu


def blast_round(size, transport):
    """MB/s of bulk bytes over the transport alone, two processes, and the
    CPU seconds both used."""
    env = env_for("/nonexistent", transport)
    sink = subprocess.Popen([BLAST, "sink"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        node, addr = sink.stdout.readline().split()
        before = cpu_seconds(sink.pid)
        send = subprocess.run(["/usr/bin/time", "-f", "%U %S", BLAST, "send", node, addr, str(size >> 20)],
                              env=env, check=True, capture_output=True, text=True)
        cpu = cpu_seconds(sink.pid) - before + sum(map(float, send.stderr.split()[-2:]))
        return float(send.stdout.strip()), cpu
    finally:
        sink.terminate()
        sink.wait()


def local_round(base, data, size):
    """A push into a fresh local store and a pull back out of it: the
    pipeline without the network. MB/s and CPU seconds of each."""
    home = tempfile.mkdtemp(dir=base, prefix="local-")
    env = env_for(home, "tuned")
    run([BIN, "init", "-q"], env)
    push_s, _, push_cpu = timed([BIN, "push", "-q", data], env)
    out = os.path.join(base, "local-pulled.bin")
    pull_s, _, pull_cpu = timed([BIN, "pull", "-q", "data.bin", "-o", out], env)
    os.remove(out)
    shutil.rmtree(home, ignore_errors=True)
    return size / push_s / 1e6, push_cpu, size / pull_s / 1e6, pull_cpu


def ensure_sshd(base):
    if not os.path.exists("/usr/sbin/sshd") or not shutil.which("rsync") or not shutil.which("scp"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        run(["apt-get", "install", "-y", "-qq", "rsync", "openssh-server"],
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    keydir = tempfile.mkdtemp(dir=base, prefix="ssh-")
    key = os.path.join(keydir, "id")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    host = os.path.join(keydir, "host")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host])
    auth = os.path.join(keydir, "authorized_keys")
    shutil.copy(key + ".pub", auth)
    os.chmod(auth, 0o600)
    os.makedirs("/run/sshd", exist_ok=True)
    port = SSH_PORT
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-p", port, "-h", host, "-o", f"AuthorizedKeysFile={auth}",
                             "-o", "PermitRootLogin=yes", "-o", "StrictModes=no", "-o", "ListenAddress=127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = ["-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    ssh = " ".join(["ssh", "-p", port] + options)
    deadline = time.time() + 10
    while subprocess.run(ssh.split() + ["127.0.0.1", "true"], capture_output=True).returncode != 0:
        if time.time() > deadline:
            sys.exit("sshd did not start")
        time.sleep(0.1)
    return sshd, ssh, options


def ssh_copy_round(base, data, size, copy):
    """MB/s of one push (local file to the sshd) and one pull (back) with
    `copy(source, dest)`, each to a fresh directory."""
    rates = []
    for direction in ("push", "pull"):
        dest = tempfile.mkdtemp(dir=base, prefix="ssh-copy-")
        source, target = (data, f"127.0.0.1:{dest}/") if direction == "push" else (f"127.0.0.1:{data}", dest + "/")
        start = time.perf_counter()
        copy(source, target)
        rates.append(size / (time.perf_counter() - start) / 1e6)
        shutil.rmtree(dest)
    return tuple(rates)


def rsync_round(base, data, size, ssh):
    return ssh_copy_round(base, data, size, lambda src, dst: run(["rsync", "-a", "--whole-file", "-e", ssh, src, dst]))


def scp_round(base, data, size, options):
    return ssh_copy_round(base, data, size, lambda src, dst: run(
        ["scp", "-q", "-c", "aes128-gcm@openssh.com", "-P", SSH_PORT] + options + [src, dst]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument("--bin-dir", help="where p2pfs and examples/quic_blast are (default: target/release)")
    args = parser.parse_args()
    if args.bin_dir:
        global BIN, BLAST
        BIN = os.path.join(args.bin_dir, "p2pfs")
        BLAST = os.path.join(args.bin_dir, "examples", "quic_blast")
    if not os.path.exists(BIN) or not os.path.exists(BLAST):
        sys.exit("build first: cargo build --release --bins --examples")
    base = tempfile.mkdtemp(prefix="p2pfs-bench-net-", dir="/dev/shm" if args.tmpfs else None)
    try:
        data = os.path.join(base, "data.bin")
        size = args.size_mib << 20
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        sshd, ssh, ssh_options = ensure_sshd(base)
        results = {"tuned": [], "default": [], "rsync": [], "scp": [], "local": [], "blast tuned": [],
                   "blast default": []}
        for i in range(args.runs):
            for transport in ("tuned", "default"):
                results[transport].append(p2pfs_round(base, data, size, transport))
                results["blast " + transport].append(blast_round(size, transport))
            results["rsync"].append(rsync_round(base, data, size, ssh))
            results["scp"].append(scp_round(base, data, size, ssh_options))
            results["local"].append(local_round(base, data, size))
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
        sshd.terminate()
        where = "tmpfs (/dev/shm)" if args.tmpfs else "disk"
        print(f"{args.size_mib} MiB random data, one node on 127.0.0.1, homes on {where}, median of {args.runs}")
        # Each direction against the same direction of each baseline.
        ssh_rates = {name: [statistics.median(r[i] for r in results[name]) for i in (0, 1)]
                     for name in ("rsync", "scp")}
        for transport in ("tuned", "default"):
            rows = results[transport]
            rates = [statistics.median(r[i] for r in rows) for i in (0, 1)]
            against = lambda i: ", ".join(f"{rates[i] / ssh_rates[n][i]:.2f}x {n}" for n in ("rsync", "scp"))
            print(f"  {transport:8} push {rates[0]:6.0f} MB/s ({against(0)})   "
                  f"pull {rates[1]:6.0f} MB/s ({against(1)})   "
                  f"peak RSS: push {max(r[2] for r in rows) / 1024:.0f} MiB, "
                  f"pull {max(r[3] for r in rows) / 1024:.0f} MiB, node {max(r[4] for r in rows) / 1024:.0f} MiB")
        print(f"  rsync -e ssh  push {ssh_rates['rsync'][0]:6.0f} MB/s   pull {ssh_rates['rsync'][1]:6.0f} MB/s")
        print(f"  scp -c aes128-gcm@openssh.com  push {ssh_rates['scp'][0]:6.0f} MB/s   "
              f"pull {ssh_rates['scp'][1]:6.0f} MB/s")
        local = statistics.median(r[0] for r in results["local"])
        local_pull = statistics.median(r[2] for r in results["local"])
        blast = {t: statistics.median(r[0] for r in results["blast " + t]) for t in ("tuned", "default")}
        print(f"  ceilings: local push {local:6.0f} MB/s, local pull {local_pull:6.0f} MB/s (no network); "
              f"transport alone {blast['tuned']:6.0f} MB/s tuned, {blast['default']:6.0f} MB/s default")
        # Both processes share the machine's cores, so a transfer can go no
        # faster than its CPU seconds spread over every core. The transport
        # alone plus the same transfer to or from the local store (chunk,
        # hash, seal, write; or read, verify, open, write) is a floor on those
        # seconds: what the tuned transport and the pipeline cost by themselves.
        cores = os.cpu_count()
        gib = size / (1 << 30)
        bound = lambda cpu: (1 << 30) / (cpu / cores) / 1e6
        transport_cpu = statistics.median(r[1] for r in results["blast tuned"]) / gib
        for name, measured, local in (("push", 5, 1), ("pull", 6, 3)):
            spent = statistics.median(r[measured] for r in results["tuned"]) / gib
            local_cpu = statistics.median(r[local] for r in results["local"]) / gib
            floor = transport_cpu + local_cpu
            print(f"  CPU per GiB, {name}: {spent:.2f} core-s (client and node), at most {bound(spent):.0f} MB/s "
                  f"on {cores} cores; floor: transport alone {transport_cpu:.2f} + local {name} {local_cpu:.2f} "
                  f"= {floor:.2f} core-s, at most {bound(floor):.0f} MB/s; {spent / floor:.2f}x the floor")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
