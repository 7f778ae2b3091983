#!/usr/bin/env python3
"""Benchmark harness for redis-bisync (issues 6 and 10): figures B1-B8 against plain
Redis and native replication, written to BENCHMARKS.md.

Python 3.11 standard library only; drives redis-server, redis-benchmark and
redis-cli. Run it through scripts/bench.sh, which builds the module, makes a work
directory and stops every server on exit. Every setting is an environment variable
(see ENV below); QUICK=1 runs each figure once with small sizes (smoke test), and
scripts/bench.sh then writes target/bench/BENCHMARKS-quick.md instead of BENCHMARKS.md.

`python3 scripts/bench.py load PORT RATE` is the paced background writer used by B2;
`python3 scripts/bench.py incr PORT KEYS SECONDS SEED CHUNK START_AT` is B8's INCRBY writer.
"""

import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# ----------------------------------------------------------------------------
# settings

QUICK = os.environ.get("QUICK", "0") not in ("", "0", "no")


def env_num(name, full, quick, cast=int):
    raw = os.environ.get(name)
    if raw not in (None, ""):
        return cast(raw)
    return quick if QUICK else full


ENV = {}


def setting(name, full, quick, cast=int):
    ENV[name] = env_num(name, full, quick, cast)
    return ENV[name]


REPEATS = setting("REPEATS", 5, 1)
FIGURES = [f.strip().upper() for f in os.environ.get("FIGURES", "B1,B2,B3,B4,B5,B6,B7,B7S,B8").split(",")
           if f.strip()]
B1_SECONDS = setting("B1_SECONDS", 2.0, 1.0, float)
B1_TESTS = [t.strip() for t in os.environ.get("B1_TESTS", "set,incr,hset,lpush,sadd,zadd").split(",") if t.strip()]
B1_MODES = [m.strip() for m in os.environ.get("B1_MODES", "P16,P1").split(",") if m.strip()]
B2_SAMPLES = setting("B2_SAMPLES", 1000, 200)
B2_LOAD_RATE = setting("B2_LOAD_RATE", 30000, 30000)
B2_GAP_MS = setting("B2_GAP_MS", 2.0, 2.0, float)
B3_SETS = setting("B3_SETS", 1_000_000, 200_000)
B4_KEYS = setting("B4_KEYS", 1_000_000, 200_000)
B5_KEYS = setting("B5_KEYS", 1_000_000, 100_000)
B5_CHANGES = setting("B5_CHANGES", 10_000, 10_000)
B5_DIRTY_ROUNDS = setting("B5_DIRTY_ROUNDS", 4, 4)
B5_TIMEOUT = setting("B5_TIMEOUT", 60.0, 20.0, float)
VALUE_SIZE = setting("VALUE_SIZE", 100, 100)
B6_KEYS = setting("B6_KEYS", 1_000_000, 100_000)
B7_WRITES = setting("B7_WRITES", 200_000, 50_000)
B7_TIMEOUT = setting("B7_TIMEOUT", 10.0, 5.0, float)
B7_DRAIN_TIMEOUT = setting("B7_DRAIN_TIMEOUT", 20.0, 10.0, float)
B7_PIPELINE = setting("B7_PIPELINE", 16, 16)
# B7S: one key prefilled to each size, then B7S_WRITES writes with -r 1000000 (cost per write vs key size)
B7S_SIZES = [int(x) for x in os.environ.get("B7S_SIZES", "10000,50000" if QUICK else "10000,200000").split(",") if x.strip()]
ENV["B7S_SIZES"] = "/".join(str(x) for x in B7S_SIZES)
B7S_TESTS = [t.strip() for t in os.environ.get("B7S_TESTS", "hset,sadd,zincrby").split(",") if t.strip()]
B7S_WRITES = setting("B7S_WRITES", 30_000, 20_000)
# B8: INCRBY on the same B8_KEYS keys from both sides at once for B8_SECONDS, then converge and check sums
B8_KEYS = setting("B8_KEYS", 1000, 1000)
B8_SECONDS = setting("B8_SECONDS", 10.0, 3.0, float)
B8_CHUNK = setting("B8_CHUNK", 100, 100)
B8_CONVERGE_TIMEOUT = setting("B8_CONVERGE_TIMEOUT", 60.0, 30.0, float)
B8_VARIANTS = [v.strip() for v in os.environ.get("B8_VARIANTS", "live,partitioned").split(",") if v.strip()]
DRAIN_TIMEOUT = setting("DRAIN_TIMEOUT", 90.0, 30.0, float)
ACK_TIMEOUT = setting("ACK_TIMEOUT", 5.0, 3.0, float)
BISYNC_ARGS = os.environ.get("BISYNC_ARGS", "backlog-size 2gb max-pending-keys 100000000").split()
BISYNC_SECRET = os.environ.get("BISYNC_SECRET", "1") not in ("", "0", "no")
# A second build of the module (e.g. the previous commit): B1, B7S and B8 then also run it as
# "bisync-before", interleaved with the others, so before and after come from the same run.
MODULE_BEFORE = os.path.abspath(os.environ["BISYNC_MODULE_BEFORE"]) if os.environ.get("BISYNC_MODULE_BEFORE") else None
B8_BEFORE = os.environ.get("B8_BEFORE", "1") not in ("", "0", "no")

HOST = "127.0.0.1"

# ----------------------------------------------------------------------------
# small utilities


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rnd(x, digits=3):
    """A measured figure for the progress log: rounded, and "n/a" when missing."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


class RespError(Exception):
    pass


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A minimal blocking RESP2 client."""

    def __init__(self, port, timeout=60.0):
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=1 << 16)

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError(f"connection to {self.port} closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"bad reply line {line!r}")

    def cmd(self, *args):
        self.sock.sendall(resp(*args))
        r = self._read()
        if isinstance(r, RespError):
            raise r
        return r

    def pipeline(self, cmds, chunk=5000):
        """Send many commands (lists of args), return the replies."""
        out = []
        for i in range(0, len(cmds), chunk):
            part = cmds[i:i + chunk]
            self.sock.sendall(b"".join(resp(*c) for c in part))
            out.extend(self._read() for _ in part)
        return out

    def info(self, section=""):
        raw = self.cmd("INFO", section) if section else self.cmd("INFO")
        d = {}
        for line in raw.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                d[k] = v
        return d


def num(v):
    if isinstance(v, bytes):
        v = v.decode()
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v


def sync_status(conn):
    arr = conn.cmd("SYNC.STATUS")
    return {arr[i].decode(): num(arr[i + 1]) for i in range(0, len(arr), 2)}


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_starttime(pid):
    """Start time of a process in clock ticks (field 22 of /proc/<pid>/stat): with the
    pid, it identifies the process even after Redis rewrites its command line."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def wait_until(pred, timeout, interval=0.01, what="condition"):
    """Poll pred() until truthy; return (value, seconds) or (None, seconds) on timeout."""
    t0 = time.perf_counter()
    while True:
        v = pred()
        if v:
            return v, time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            return None, time.perf_counter() - t0
        time.sleep(interval)


def cmdstat_calls(conn, name):
    info = conn.info("commandstats")
    v = info.get(f"cmdstat_{name}")
    if not v:
        return 0
    return int(re.search(r"calls=(\d+)", v).group(1))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------
# processes


class Harness:
    def __init__(self, work, module):
        self.work = Path(work)
        self.module = module
        self.servers = []
        self.proxies = []
        self.notes = []  # (figure, text)
        self.warnings = {}  # normalised module warning -> [count, example]
        self.pidfile = self.work / "pids"
        self.secret_file = self.work / "bisync.secret"
        self.secret_file.write_text("benchmark-secret-" + "%032x" % random.getrandbits(128) + "\n")
        self.counter = 0

    def note(self, fig, text):
        if (fig, text) not in self.notes:
            self.notes.append((fig, text))
            log(f"NOTE {fig}: {text}")

    def free_port(self):
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def server(self, name, extra=(), module_args=None, module=None):
        self.counter += 1
        srv = Server(self, f"{self.counter:03d}-{name}", list(extra), module_args, module)
        self.servers.append(srv)
        return srv

    def bisync_args(self, node, listen, peer, extra=()):
        args = ["node-id", node, "listen", f"{HOST}:{listen}", "peer", f"{HOST}:{peer}"]
        if BISYNC_SECRET:
            args += ["secret-file", str(self.secret_file)]
        return args + BISYNC_ARGS + list(extra)

    def stop_all(self):
        for p in self.proxies:
            p.close()
        for s in list(self.servers):
            s.stop()


class Server:
    def __init__(self, h, name, extra, module_args, module=None):
        self.h = h
        self.name = name
        self.port = h.free_port()
        self.dir = h.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        cmd = ["redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir),
               "--logfile", str(self.log), "--save", "", "--appendonly", "no", "--daemonize", "no",
               "--enable-debug-command", "yes"] + extra
        if module_args is not None:
            cmd += ["--loadmodule", module or h.module] + module_args
        self.cmdline = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr", "wb"),
                                     start_new_session=True)
        self.pid = self.proc.pid
        with open(h.pidfile, "a") as f:
            f.write(f"{self.pid} {proc_starttime(self.pid)}\n")
        self.stopped = False
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server {name} exited at start:\n{self.tail()}")
            try:
                c = Conn(self.port, timeout=2)
                c.cmd("PING")
                c.close()
                break
            except (OSError, ConnectionError, RespError):
                if time.time() > deadline:
                    raise RuntimeError(f"redis-server {name} did not answer:\n{self.tail()}")
                time.sleep(0.05)
        self.c = Conn(self.port)

    def tail(self, n=15):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def conn(self):
        return Conn(self.port)

    def status(self):
        return sync_status(self.c)

    def rss(self):
        return rss_bytes(self.pid)

    def used_memory(self):
        return int(self.c.info("memory")["used_memory"])

    def sigstop(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def module_warnings(self):
        """Warning-level lines the module wrote (`# <module> bisync: ...`)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for ln in lines:
            if " # " in ln and "bisync:" in ln and "no secret-file given" not in ln:
                out.append(ln.split(" # ", 1)[1])
        return out

    def stop(self):
        if self in self.h.servers:
            self.h.servers.remove(self)
        for ln in self.module_warnings():
            self.h.warnings.setdefault(re.sub(r"\d+", "N", ln)[:200], [0, ln])[0] += 1
        try:
            self.c.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass


class Proxy:
    """TCP forwarder that can cut a link: `down()` closes every connection and
    refuses new ones (accept then close) until `heal()`. Counts bytes both ways."""

    def __init__(self, h, target_port):
        self.target = target_port
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((HOST, 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.up = True
        self.closed = False
        self.lock = threading.Lock()
        self.pairs = []
        self.fwd = 0   # client -> target
        self.back = 0  # target -> client
        threading.Thread(target=self._accept, daemon=True).start()
        h.proxies.append(self)

    def total(self):
        return self.fwd + self.back

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                u = socket.create_connection((HOST, self.target), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u, "fwd"), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, "back"), daemon=True).start()

    def _pump(self, src, dst, direction):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    if direction == "fwd":
                        self.fwd += len(data)
                    else:
                        self.back += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self):
        self.up = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, u in pairs:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def heal(self):
        self.up = True

    def close(self):
        self.closed = True
        self.down()
        try:
            self.ls.close()
        except OSError:
            pass


class BusySampler:
    """Every 5 s: the load average, and which processes not started by this run used ≥ 20 % of a
    core over those 5 s (from /proc/<pid>/stat), so the report can say what else was running."""

    def __init__(self, h):
        self.h = h
        self.loads = []
        self.busy = {}  # comm -> samples it was busy in
        self.samples = 0
        self.stop = False
        self.ticks = os.sysconf("SC_CLK_TCK")
        threading.Thread(target=self._run, daemon=True).start()

    def _read(self):
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            out[int(d)] = (comm, int(fields[11]) + int(fields[12]), int(fields[1]))
        return out

    def _ours(self, pid, snap):
        # this harness, its servers, redis-benchmark and its writers: descendants of our process
        me = os.getpid()
        for _ in range(20):
            if pid == me:
                return True
            if pid not in snap:
                return False
            pid = snap[pid][2]
        return False

    def _run(self):
        prev, t_prev = self._read(), time.time()
        while not self.stop:
            time.sleep(5)
            cur, t = self._read(), time.time()
            self.samples += 1
            self.loads.append(os.getloadavg()[0])
            seen = set()
            for pid, (comm, ticks, _) in cur.items():
                if pid in prev and prev[pid][0] == comm:
                    share = (ticks - prev[pid][1]) / self.ticks / max(t - t_prev, 0.1)
                    if share >= 0.2 and not self._ours(pid, cur):
                        seen.add(comm)
            for comm in seen:
                self.busy[comm] = self.busy.get(comm, 0) + 1
            prev, t_prev = cur, t

    def summary(self):
        top = sorted(self.busy.items(), key=lambda kv: -kv[1])[:8]
        return {"samples": self.samples, "load1_median": median(self.loads), "load1_max": max(self.loads) if self.loads else None,
                "busy": top}


# ----------------------------------------------------------------------------
# topologies


class Plain:
    kind = "plain"

    def __init__(self, h, name="plain"):
        self.a = h.server(name)

    def drain(self, timeout=None):
        return 0.0

    def stop(self):
        self.a.stop()


class Native:
    kind = "native"

    def __init__(self, h, name="native", primary_extra=(), via_proxy=False):
        self.h = h
        self.a = h.server(name + "-primary", ["--repl-diskless-sync-delay", "0",
                                              "--client-output-buffer-limit", "replica 0 0 0",
                                              "--repl-backlog-size", "1gb", "--repl-timeout", "300"]
                          + list(primary_extra))
        self.proxy = Proxy(h, self.a.port) if via_proxy else None
        self.b = h.server(name + "-replica", ["--repl-timeout", "300"])
        self.b.c.cmd("REPLICAOF", HOST, self.proxy.port if self.proxy else self.a.port)
        ok, _ = wait_until(lambda: self.b.c.info("replication").get("master_link_status") == "up", 20, 0.05)
        if not ok:
            raise RuntimeError(f"native replica of {name} did not connect:\n{self.b.tail()}")

    def offsets(self):
        return (int(self.a.c.info("replication")["master_repl_offset"]),
                int(self.b.c.info("replication").get("slave_repl_offset", -1)))

    def drain(self, timeout=DRAIN_TIMEOUT):
        target = self.offsets()[0]
        ok, t = wait_until(lambda: self.offsets()[1] >= target, timeout, 0.01)
        return t if ok else None

    def stop(self):
        self.b.stop()
        self.a.stop()


class Bisync:
    """Two servers with the module. peer=False: A's peer address points at a
    port where nothing listens (the peer is unreachable). proxy=True: each
    link address goes through a Proxy, so the link can be cut."""
    kind = "bisync"

    def __init__(self, h, name="bisync", peer=True, proxy=False, extra=(), module=None):
        self.h = h
        self.module = module
        la, lb = h.free_port(), h.free_port()
        self.proxies = []
        if not peer:
            dead = h.free_port()
            self.a = h.server(name + "-a", module_args=h.bisync_args("a", la, dead, extra), module=module)
            self.b = None
            st = self.a.status()
            return
        if proxy:
            pa, pb = Proxy(h, la), Proxy(h, lb)
            self.proxies = [pa, pb]
            peer_of_a, peer_of_b = pb.port, pa.port
        else:
            peer_of_a, peer_of_b = lb, la
        self.a = h.server(name + "-a", module_args=h.bisync_args("a", la, peer_of_a, extra), module=module)
        self.b = h.server(name + "-b", module_args=h.bisync_args("b", lb, peer_of_b, extra), module=module)
        ok, _ = wait_until(lambda: self.a.status()["link"] == "up" and self.b.status()["link"] == "up", 20, 0.05)
        if not ok:
            raise RuntimeError(f"bisync link {name} did not come up: A={self.a.status()} B={self.b.status()}\n"
                               f"{self.a.tail()}\n{self.b.tail()}")

    def drain(self, timeout=DRAIN_TIMEOUT):
        """Wait until B applied everything A issued (and A everything B issued).
        Returns seconds, or None on timeout."""
        if self.b is None:
            return 0.0
        ta = self.a.status()["issued_seq"]
        tb = self.b.status()["issued_seq"]
        ok, t = wait_until(lambda: self.b.status()["applied_seq"] >= ta and self.a.status()["applied_seq"] >= tb,
                           timeout, 0.01)
        return t if ok else None

    def wait_acked(self, timeout=ACK_TIMEOUT):
        target = self.a.status()["issued_seq"]
        ok, t = wait_until(lambda: self.a.status()["acked_seq"] >= target, timeout, 0.02)
        return t if ok else None

    def cut(self):
        for p in self.proxies:
            p.down()

    def heal(self):
        for p in self.proxies:
            p.heal()

    def stop(self):
        for s in (self.b, self.a):
            if s:
                s.stop()
        for p in self.proxies:
            p.close()


def check_acks(h, fig, pair):
    """Record a note if acknowledgements do not catch up once the peer applied all."""
    st = pair.a.status()
    if st["acked_seq"] < st["issued_seq"]:
        h.note(fig, f"after the peer applied everything, A still has acked_seq={st['acked_seq']} < "
                    f"issued_seq={st['issued_seq']} (pending_keys={st['pending_keys']}, "
                    f"backlog_bytes={st['backlog_bytes']}): acknowledgements are not coming back")
    if st.get("last_error"):
        h.note(fig, f"A's last_error (possibly from an earlier, recovered event): {st['last_error']}")


# ----------------------------------------------------------------------------
# redis-benchmark


LAST_CLIENT_RPS = [None]
RPS_FINAL = re.compile(r"([\d.]+) requests per second")
RPS_OVERALL = re.compile(r"rps=[\d.]+ \(overall: ([\d.]+)\)")


def redis_benchmark(port, args, seconds=None, timeout=600.0, probe=None, warmup=0.3):
    """Run redis-benchmark -q. With `seconds`, it runs a huge -n and is killed after
    that many seconds; the rate is then measured on the server if `probe` (a function
    returning the server's count of the command's calls) is given: calls between
    `warmup` and the end divided by that time; otherwise the last 'overall' rate
    redis-benchmark printed. Returns (requests per second, elapsed seconds,
    completed: bool); with a probe, the client-side rate is in LAST_CLIENT_RPS."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port), "-q"]
    if seconds:
        cmd += ["-n", "2000000000"]
    cmd += list(args)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    buf = []
    reader = threading.Thread(target=lambda: buf.append(p.stdout.read()), daemon=True)
    reader.start()
    limit = seconds if seconds else timeout
    server_rate = None
    if seconds and probe:
        time.sleep(warmup)
        c1, t1 = probe(), time.perf_counter()
        # the window is always seconds - warmup long, even if the probe was slow to answer
        time.sleep(max(0.1, seconds - warmup))
        c2, t2 = probe(), time.perf_counter()
        if p.poll() is None:
            server_rate = (c2 - c1) / (t2 - t1)
        limit = (t2 - t0) + 0.01
    try:
        p.wait(timeout=max(0.0, limit - (time.perf_counter() - t0)))
        completed = True
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        completed = False
    elapsed = time.perf_counter() - t0
    reader.join(5)
    text = (buf[0] if buf else b"").decode(errors="replace")
    final = RPS_FINAL.findall(text)
    if server_rate is not None:
        overall = RPS_OVERALL.findall(text)
        LAST_CLIENT_RPS[0] = float(overall[-1]) if overall else None
        return server_rate, elapsed, False
    if completed and final:
        return float(final[-1]), elapsed, True
    overall = RPS_OVERALL.findall(text)
    if overall:
        return float(overall[-1]), elapsed, completed and not seconds
    if seconds is None and completed:
        raise RuntimeError(f"cannot parse redis-benchmark output: {text[-500:]!r}")
    return 0.0, elapsed, False


# custom commands so that hset/lpush/sadd also write random keys (redis-benchmark's
# own -t hset/lpush/sadd write into one key each: myhash, mylist, myset)
B1_COMMANDS = {
    "set": ["-t", "set"],
    "incr": ["-t", "incr"],
    "get": ["-t", "get"],
    "hset": ["hset", "myhash:__rand_int__", "element:__rand_int__", "xxx"],
    "lpush": ["lpush", "mylist:__rand_int__", "xxx"],
    "sadd": ["sadd", "myset:__rand_int__", "element:__rand_int__"],
    "zadd": ["zadd", "myzset:__rand_int__", "__rand_int__", "element:__rand_int__"],
}
B1_MODE_ARGS = {"P16": ["-P", "16", "-c", "50"], "P1": ["-P", "1", "-c", "50"]}


# ----------------------------------------------------------------------------
# data files


def resp_file(h, name, keys, value_size, prefix, fill=b"v"):
    """A RESP file of SET <prefix><i> <value> for i in range(keys), for redis-cli --pipe."""
    path = h.work / f"{name}.resp"
    if path.exists():
        return path
    val = (fill * value_size)
    with open(path, "wb") as f:
        chunk = []
        for i in range(keys):
            k = b"%s%08d" % (prefix, i)
            chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(val), val))
            if len(chunk) >= 10000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    return path


def pipe_load(port, path):
    with open(path, "rb") as f:
        r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "--pipe"], stdin=f,
                           capture_output=True, timeout=600)
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0 or "errors: 0" not in out:
        raise RuntimeError(f"redis-cli --pipe failed: {out} {r.stderr.decode(errors='replace')}")


def set_resp_size(key_len, value_len):
    return len(resp("SET", "k" * key_len, "v" * value_len))


# ----------------------------------------------------------------------------
# figures

RESULTS = {}


def rotated(items, rep):
    k = rep % len(items)
    return items[k:] + items[:k]


def fig_b1(h):
    configs = ["plain", "bisync", "native", "bisync-unreachable"] + (["bisync-before"] if MODULE_BEFORE else [])
    runs = RESULTS.setdefault("B1", [])
    for rep in range(REPEATS):
        log(f"B1 rep {rep + 1}/{REPEATS}")
        topo = {"plain": Plain(h, "b1-plain"), "bisync": Bisync(h, "b1-bisync"),
                "native": Native(h, "b1-native"), "bisync-unreachable": Bisync(h, "b1-unreach", peer=False)}
        if MODULE_BEFORE:
            topo["bisync-before"] = Bisync(h, "b1-before", module=MODULE_BEFORE)
        try:
            for mode in B1_MODES:
                for test in B1_TESTS:
                    for cfg in rotated(configs, rep):
                        t = topo[cfg]
                        t.a.c.cmd("FLUSHALL")
                        pre = t.drain()
                        st0 = t.a.status() if cfg.startswith("bisync") else None
                        calls0 = cmdstat_calls(t.a.c, test)
                        conn = t.a.c
                        rps, el, _ = redis_benchmark(t.a.port, B1_MODE_ARGS[mode] + ["-r", "1000000"] + B1_COMMANDS[test],
                                                     seconds=B1_SECONDS, probe=lambda: cmdstat_calls(conn, test))
                        client_rps = LAST_CLIENT_RPS[0]
                        writes = cmdstat_calls(t.a.c, test) - calls0
                        drain = t.drain()
                        row = {"rep": rep, "mode": mode, "test": test, "config": cfg, "rps": rps,
                               "client_rps": client_rps, "writes": writes, "drain_s": drain, "pre_drain_s": pre}
                        if st0 is not None:
                            st1 = t.a.status()
                            row["ops_captured"] = st1["ops_captured"] - st0["ops_captured"]
                            row["bytes_sent"] = st1["bytes_sent"] - st0["bytes_sent"]
                            row["backlog_bytes"] = st1["backlog_bytes"]
                            row["pending_keys"] = st1["pending_keys"]
                            row["link"] = st1["link"]
                        if cfg in ("bisync", "bisync-before") and drain is None:
                            h.note("B1", f"peer did not apply everything within {DRAIN_TIMEOUT}s after {mode} {test}")
                        runs.append(row)
                        log(f"  B1 {mode} {test:6s} {cfg:18s} {rps:10.0f} rps  drain={rnd(drain, 2)} s")
            check_acks(h, "B1", topo["bisync"])
            st = topo["bisync-unreachable"].a.status()
            if st["link"] == "up":
                h.note("B1", "the unreachable-peer server reports link up")
        finally:
            for t in topo.values():
                t.stop()


def lag_samples(src, dst, n, gap_ms, tag):
    w, r = Conn(src.port), Conn(dst.port)
    lags = []
    timeouts = 0
    try:
        for i in range(n):
            key = f"lag:{tag}:{i}"
            t0 = time.perf_counter()
            w.cmd("SET", key, str(time.time_ns()))
            while True:
                if r.cmd("EXISTS", key):
                    lags.append((time.perf_counter() - t0) * 1000.0)
                    break
                if time.perf_counter() - t0 > 5.0:
                    timeouts += 1
                    break
                time.sleep(0.0001)  # ~0.1-0.2 ms poll interval, so the poller does not eat a core
            time.sleep(gap_ms / 1000.0)
    finally:
        w.close()
        r.close()
    lags.sort()
    if not lags:
        return {"p50": None, "p99": None, "max": None, "timeouts": timeouts, "n": 0}

    def pct(p):
        return lags[min(len(lags) - 1, int(round(p / 100.0 * (len(lags) - 1))))]
    return {"p50": pct(50), "p99": pct(99), "max": lags[-1], "timeouts": timeouts, "n": len(lags)}


def start_loader(port, rate):
    return subprocess.Popen([sys.executable, __file__, "load", str(port), str(rate)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def stop_loader(p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    m = re.search(rb"rate=([\d.]+)", out or b"")
    return float(m.group(1)) if m else None


def fig_b2(h):
    runs = RESULTS.setdefault("B2", [])
    topo = {"bisync": Bisync(h, "b2-bisync"), "native": Native(h, "b2-native")}
    try:
        for rep in range(REPEATS):
            log(f"B2 rep {rep + 1}/{REPEATS}")
            for load in ("idle", "load"):
                for cfg in rotated(["bisync", "native"], rep):
                    t = topo[cfg]
                    t.a.c.cmd("FLUSHALL")
                    t.drain()
                    loader = None
                    if load == "load":
                        loader = start_loader(t.a.port, B2_LOAD_RATE)
                        time.sleep(0.5)
                    calls0 = cmdstat_calls(t.a.c, "set")
                    t0 = time.perf_counter()
                    res = lag_samples(t.a, t.b, B2_SAMPLES, B2_GAP_MS, f"{cfg}{rep}{load}")
                    window = time.perf_counter() - t0
                    calls1 = cmdstat_calls(t.a.c, "set")
                    loader_rate = stop_loader(loader) if loader else None
                    res.update({"rep": rep, "load": load, "config": cfg,
                                "bg_rate": (calls1 - calls0 - res["n"]) / window if window else None,
                                "loader_rate": loader_rate})
                    runs.append(res)
                    log(f"  B2 {load:4s} {cfg:6s} p50={rnd(res['p50'], 2)} p99={rnd(res['p99'], 2)} max={rnd(res['max'], 2)} "
                        f"bg={res['bg_rate']:.0f}/s timeouts={res['timeouts']}")
                    if res["timeouts"]:
                        h.note("B2", f"{cfg} {load}: {res['timeouts']} writes not visible on the other side within 5 s")
                    t.drain()
        check_acks(h, "B2", topo["bisync"])
    finally:
        for t in topo.values():
            t.stop()


def fig_b3(h):
    runs = RESULTS.setdefault("B3", [])
    topo = {"bisync": Bisync(h, "b3-bisync"), "native": Native(h, "b3-native")}
    try:
        for rep in range(REPEATS):
            log(f"B3 rep {rep + 1}/{REPEATS}")
            for cfg in rotated(["bisync", "native"], rep):
                t = topo[cfg]
                t.a.c.cmd("FLUSHALL")
                if t.drain() is None:
                    h.note("B3", f"{cfg}: peer not drained before the stall")
                row = {"rep": rep, "config": cfg}
                if cfg == "bisync":
                    b0 = t.b.status()
                    a0 = t.a.status()
                if cfg == "native":
                    off0 = t.offsets()[1]
                t.b.sigstop()
                wrps, wel, _ = redis_benchmark(t.a.port, ["-t", "set", "-n", str(B3_SETS), "-r", "1000000",
                                                          "-P", "16", "-c", "50"], timeout=600)
                row["write_rps_while_stalled"] = wrps
                if cfg == "bisync":
                    a1 = t.a.status()
                    target = a1["issued_seq"]
                    row["ops_captured"] = a1["ops_captured"] - a0["ops_captured"]
                    row["backlog_bytes"] = a1["backlog_bytes"]
                    row["link_during_stall"] = a1["link"]
                    t.b.sigcont()
                    t0 = time.perf_counter()
                    ok, el = wait_until(lambda: t.b.status()["applied_seq"] >= target, DRAIN_TIMEOUT, 0.01)
                    b1 = t.b.status()
                    row["applied"] = b1["ops_applied"] - b0["ops_applied"]
                    row["catchup_s"] = el if ok else None
                    row["applied_ops_s"] = row["applied"] / el if ok and el > 0 else None
                    row["sets_s"] = B3_SETS / el if ok and el > 0 else None
                    row["partial_syncs"] = b1["partial_syncs"] - b0["partial_syncs"] + \
                        t.a.status()["partial_syncs"] - a0["partial_syncs"]
                    ack, ack_el = wait_until(lambda: t.a.status()["acked_seq"] >= target, ACK_TIMEOUT, 0.02)
                    row["acked_after_s"] = (time.perf_counter() - t0) if ack else None
                    if not ok:
                        h.note("B3", f"the module's peer did not catch up within {DRAIN_TIMEOUT}s "
                                     f"(applied_seq={b1['applied_seq']}, target {target})")
                    if not ack:
                        st = t.a.status()
                        h.note("B3", f"acked_seq never caught up after the peer applied everything "
                                     f"(acked_seq={st['acked_seq']}, issued_seq={st['issued_seq']}); "
                                     f"catch-up is measured to applied_seq")
                else:
                    target = int(t.a.c.info("replication")["master_repl_offset"])
                    t.b.sigcont()
                    t0 = time.perf_counter()
                    ok, el = wait_until(lambda: t.offsets()[1] >= target, DRAIN_TIMEOUT, 0.01)
                    row["catchup_s"] = el if ok else None
                    row["sets_s"] = B3_SETS / el if ok and el > 0 else None
                    row["applied_ops_s"] = row["sets_s"]
                    row["bytes"] = target - off0
                    if not ok:
                        h.note("B3", f"native replica did not catch up within {DRAIN_TIMEOUT}s")
                runs.append(row)
                log(f"  B3 {cfg:6s} catch-up {rnd(row.get('catchup_s'), 2)} s, {rnd(row.get('sets_s'), 0)} SETs/s")
    finally:
        for t in topo.values():
            t.stop()


def fig_b4(h):
    """Full sync of B4_KEYS keys (DEBUG POPULATE) to an empty server: native REPLICAOF
    vs the module's first-contact full resync (a fresh, empty module server joining a
    module server that holds the data)."""
    runs = RESULTS.setdefault("B4", [])
    primary = h.server("b4-primary", ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                                      "--client-output-buffer-limit", "replica 0 0 0"])
    la, lb = h.free_port(), h.free_port()
    src = h.server("b4-bisync-a", module_args=h.bisync_args("a", la, lb))
    module_ok = True
    try:
        for srv in (primary, src):
            srv.c.cmd("DEBUG", "POPULATE", str(B4_KEYS), "key", str(VALUE_SIZE))
        for rep in range(REPEATS):
            for cfg in rotated(["native", "bisync"], rep):
                if cfg == "bisync" and not module_ok:
                    continue
                if cfg == "native":
                    r = h.server(f"b4-replica{rep}")
                    try:
                        t0 = time.perf_counter()
                        r.c.cmd("REPLICAOF", HOST, primary.port)

                        def done():
                            i = r.c.info("replication")
                            return i.get("master_link_status") == "up" and i.get("master_sync_in_progress") == "0"
                        ok, el = wait_until(done, DRAIN_TIMEOUT, 0.005)
                        n = r.c.cmd("DBSIZE")
                    finally:
                        r.stop()
                else:
                    # a fresh, empty module server with the listen address A dials
                    r = h.server(f"b4-bisync-b{rep}", module_args=h.bisync_args("b", lb, la))
                    try:
                        t0 = time.perf_counter()
                        ok, el = wait_until(lambda: r.status()["full_syncs"] >= 1, DRAIN_TIMEOUT, 0.005)
                        n = r.c.cmd("DBSIZE")
                        st = src.status()
                        if not ok:
                            module_ok = False
                            h.note("B4", f"the module's full resync of {B4_KEYS} keys did not finish within "
                                         f"{DRAIN_TIMEOUT:g} s (peer has {n} keys; source link={st['link']}, "
                                         f"last_error={st['last_error']!r}); skipped in later repetitions")
                        elif n != B4_KEYS:
                            h.note("B4", f"after the module's full resync the peer has {n} of {B4_KEYS} keys")
                    finally:
                        r.stop()
                    # wait until the source notices the peer is gone, so the next one is a new contact
                    wait_until(lambda: src.status()["link"] != "up", 15, 0.05)
                runs.append({"rep": rep, "config": cfg, "seconds": el if ok else None, "keys": n,
                             "keys_s": n / el if ok and el else None})
                log(f"  B4 {cfg:6s} full sync of {n} keys: {el:.2f}s{'' if ok else ' (timed out)'}")
    finally:
        primary.stop()
        src.stop()


def changed_values(keys, value_size, tag):
    out = []
    for i in keys:
        v = (f"{tag}:{i}:".encode() + b"w" * value_size)[:value_size]
        out.append(v)
    return out


def fig_b5(h):
    runs = RESULTS.setdefault("B5", [])
    prefix = b"b5:"
    path = resp_file(h, "b5", B5_KEYS, VALUE_SIZE, prefix)
    log(f"B5 loading {B5_KEYS} keys into a module pair and a native pair")
    pair = Bisync(h, "b5-bisync", proxy=True)
    nat = Native(h, "b5-native", via_proxy=True)
    big_backlog = BISYNC_ARGS[BISYNC_ARGS.index("backlog-size") + 1] if "backlog-size" in BISYNC_ARGS else "64mb"
    skip_dirty = False
    try:
        pipe_load(pair.a.port, path)
        pipe_load(nat.a.port, path)
        pair.drain(DRAIN_TIMEOUT * 2)
        nat.drain(DRAIN_TIMEOUT * 2)
        nb = pair.b.c.cmd("DBSIZE")
        if nb != B5_KEYS:
            h.note("B5", f"after loading, the module's peer has {nb} of {B5_KEYS} keys")
        check_acks(h, "B5", pair)
        rng = random.Random(5)
        for rep in range(REPEATS):
            log(f"B5 rep {rep + 1}/{REPEATS}")
            for variant in rotated(["bisync-partial", "bisync-dirty-key", "native"], rep):
                if variant == "bisync-dirty-key" and skip_dirty:
                    continue
                rounds = B5_DIRTY_ROUNDS if variant == "bisync-dirty-key" else 1
                idx = rng.sample(range(B5_KEYS), B5_CHANGES)
                keys = [b"%s%08d" % (prefix, i) for i in idx]
                all_rounds = [changed_values(idx, VALUE_SIZE, f"{rep}{variant}{r}") for r in range(rounds)]
                vals = all_rounds[-1]
                payload = sum(len(k) + len(v) for k, v in zip(keys, vals))
                round_resp = sum(len(resp("SET", k, v)) for k, v in zip(keys, vals))
                row = {"rep": rep, "variant": variant, "payload": payload, "resp_bytes": round_resp * rounds,
                       "changes": B5_CHANGES, "writes_per_key": rounds}
                if variant.startswith("bisync"):
                    t = pair
                    if variant == "bisync-dirty-key":
                        row["backlog_size"] = max(1024, 2 * round_resp)
                        t.a.c.cmd("CONFIG", "SET", "bisync.backlog-size", str(row["backlog_size"]))
                    s0 = t.a.status()
                    wire0 = sum(p.total() for p in t.proxies)
                    t.cut()
                    ok, _ = wait_until(lambda: t.a.status()["link"] != "up" and t.b.status()["link"] != "up", 15, 0.02)
                    if not ok:
                        h.note("B5", "the link did not notice the cut within 15 s")
                    for vs in all_rounds:
                        t.a.c.pipeline([["SET", k, v] for k, v in zip(keys, vs)])
                        time.sleep(0.05)  # separate event-loop iterations, so rounds are not coalesced
                    wait_until(lambda: t.a.status()["ops_captured"] - s0["ops_captured"] >= B5_CHANGES * rounds,
                               10, 0.01)
                    if variant == "bisync-dirty-key":
                        ok, _ = wait_until(lambda: t.a.status()["next_resync"] == "dirty-key", 5, 0.02)
                        if not ok:
                            h.note("B5", "bisync-dirty-key: A's next_resync did not become dirty-key during the "
                                         "outage")
                    time.sleep(0.5)  # the outage lasts a little after the last write
                    s1 = t.a.status()
                    row["next_resync"] = s1["next_resync"]
                    t.heal()
                    dst = t.b
                else:
                    t = nat
                    wire0 = t.proxy.total()
                    back0 = t.proxy.back
                    t.proxy.down()
                    wait_until(lambda: t.b.c.info("replication").get("master_link_status") != "up", 15, 0.02)
                    t.a.c.pipeline([["SET", k, v] for k, v in zip(keys, vals)])
                    t.proxy.heal()
                    dst = t.b

                def arrived():
                    if dst.c.cmd("MGET", *keys[:1000]) != vals[:1000]:
                        return False
                    return dst.c.cmd("MGET", *keys) == vals
                ok, el = wait_until(arrived, B5_TIMEOUT, 0.05)
                row["heal_to_applied_s"] = el if ok else None
                if variant.startswith("bisync"):
                    if variant == "bisync-dirty-key":
                        t.a.c.cmd("CONFIG", "SET", "bisync.backlog-size", big_backlog)
                    if not ok:
                        st = t.a.status()
                        h.note("B5", f"{variant}: the changed keys had not all arrived {B5_TIMEOUT:g} s after the "
                                     f"link was healed (A: link={st['link']} issued_seq={st['issued_seq']} "
                                     f"sent_seq={st['sent_seq']} pending_keys={st['pending_keys']} "
                                     f"dirty_key_syncs={st['dirty_key_syncs'] - s0['dirty_key_syncs']}, "
                                     f"last_error={st['last_error']!r})")
                        if variant == "bisync-dirty-key":
                            skip_dirty = True
                            h.note("B5", "bisync-dirty-key skipped in later repetitions")
                        ok2, el2 = wait_until(arrived, DRAIN_TIMEOUT, 0.1)
                        h.note("B5", f"after restoring backlog-size {big_backlog} the keys "
                                     + (f"arrived {el2:.1f} s later" if ok2 else "still did not arrive"))
                        if not ok2:
                            raise RuntimeError("the module pair did not recover; B5 stopped")
                    t.drain(10)
                    time.sleep(0.2)
                    s2 = t.a.status()
                    row["bytes_sent"] = s2["bytes_sent"] - s0["bytes_sent"]
                    row["wire_bytes"] = sum(p.total() for p in t.proxies) - wire0
                    row["partial_syncs"] = s2["partial_syncs"] - s0["partial_syncs"]
                    row["dirty_key_syncs"] = s2["dirty_key_syncs"] - s0["dirty_key_syncs"]
                    row["full_syncs"] = s2["full_syncs"] - s0["full_syncs"]
                    row["ops_sent"] = s2["ops_sent"] - s0["ops_sent"]
                    if variant == "bisync-dirty-key" and row["dirty_key_syncs"] == 0:
                        h.note("B5", "the small-backlog outage did not produce a dirty-key resync")
                else:
                    if not ok:
                        h.note("B5", f"native: the changed keys had not all arrived {B5_TIMEOUT:g} s after heal")
                    t.drain(10)
                    time.sleep(0.2)
                    # primary -> replica is "back" (the replica dials the proxy)
                    row["bytes_sent"] = t.proxy.back - back0
                    row["wire_bytes"] = t.proxy.total() - wire0
                row["ratio"] = row["bytes_sent"] / payload
                if not ok:
                    row["ratio"] = None
                runs.append(row)
                log(f"  B5 {variant:17s} sent {row['bytes_sent']} B for {payload} B payload: ratio "
                    f"{rnd(row['ratio'], 2)}, resync kinds p/d/f={row.get('partial_syncs')}/"
                    f"{row.get('dirty_key_syncs')}/{row.get('full_syncs')} arrived after {rnd(row['heal_to_applied_s'], 2)} s")
    finally:
        pair.stop()
        nat.stop()


def fig_b6(h):
    runs = RESULTS.setdefault("B6", [])
    prefix = b"b6:"
    path = resp_file(h, "b6", B6_KEYS, VALUE_SIZE, prefix)
    cmd_size = len(resp("SET", b"%s%08d" % (prefix, 0), b"v" * VALUE_SIZE))
    for rep in range(REPEATS):
        log(f"B6 rep {rep + 1}/{REPEATS}")
        plain = Plain(h, "b6-plain")
        pair = Bisync(h, "b6-bisync", proxy=True)
        try:
            row = {"rep": rep, "keys": B6_KEYS, "resp_size": cmd_size}
            time.sleep(0.3)
            p0, a0, b0 = plain.a.rss(), pair.a.rss(), pair.b.rss()
            pu0, au0 = plain.a.used_memory(), pair.a.used_memory()
            pipe_load(plain.a.port, path)
            pipe_load(pair.a.port, path)
            if pair.drain(DRAIN_TIMEOUT * 2) is None:
                h.note("B6", "peer did not apply the loaded keys in time")
            ack = pair.wait_acked()
            time.sleep(0.3)
            st = pair.a.status()
            p1, a1, b1 = plain.a.rss(), pair.a.rss(), pair.b.rss()
            pu1, au1 = plain.a.used_memory(), pair.a.used_memory()
            row.update({
                "acked": ack is not None, "pending_keys_after_load": st["pending_keys"],
                "backlog_after_load": st["backlog_bytes"],
                "meta_per_key_rss": ((a1 - a0) - (p1 - p0)) / B6_KEYS,
                "peer_meta_per_key_rss": ((b1 - b0) - (p1 - p0)) / B6_KEYS,
                "meta_per_key_used_memory": ((au1 - au0) - (pu1 - pu0)) / B6_KEYS,
            })
            if not ack:
                h.note("B6", f"after loading {B6_KEYS} keys and the peer applying them, A still has "
                             f"pending_keys={st['pending_keys']} backlog_bytes={st['backlog_bytes']} "
                             f"(acked_seq={st['acked_seq']} < issued_seq={st['issued_seq']}): the "
                             f"'0 bytes per key once acknowledged' figure cannot be reached")
            # outage: overwrite every key once with a same-size value
            pair.cut()
            wait_until(lambda: pair.a.status()["link"] != "up", 15, 0.02)
            s0 = pair.a.status()
            c0 = (pair.a.rss(), plain.a.rss(), pair.a.used_memory(), plain.a.used_memory())
            path2 = resp_file(h, "b6w", B6_KEYS, VALUE_SIZE, prefix, fill=b"w")  # same keys, new same-size value
            pipe_load(plain.a.port, path2)
            pipe_load(pair.a.port, path2)
            wait_until(lambda: pair.a.status()["ops_captured"] - s0["ops_captured"] >= B6_KEYS, 30, 0.02)
            time.sleep(0.3)
            s1 = pair.a.status()
            c1 = (pair.a.rss(), plain.a.rss(), pair.a.used_memory(), plain.a.used_memory())
            n = s1["ops_captured"] - s0["ops_captured"]
            row.update({
                "buffered_changes": n,
                "backlog_per_change": (s1["backlog_bytes"] - s0["backlog_bytes"]) / max(n, 1),
                "rss_per_change": ((c1[0] - c0[0]) - (c1[1] - c0[1])) / max(n, 1),
                "used_memory_per_change": ((c1[2] - c0[2]) - (c1[3] - c0[3])) / max(n, 1),
                "pending_keys_during_outage": s1["pending_keys"],
                "backlog_bytes_during_outage": s1["backlog_bytes"],
                "next_resync": s1["next_resync"],
            })
            pair.heal()
            runs.append(row)
            log(f"  B6 backlog/change={row['backlog_per_change']:.1f} B rss/change={row['rss_per_change']:.1f} B "
                f"(RESP {cmd_size} B); meta/key after load={row['meta_per_key_rss']:.1f} B "
                f"pending={row['pending_keys_after_load']}")
        finally:
            plain.stop()
            pair.stop()


def key_size(conn, test, variant):
    key = {"hset": "myhash", "lpush": "mylist", "sadd": "myset"}[test]
    cmd = {"hset": "HLEN", "lpush": "LLEN", "sadd": "SCARD"}[test]
    return conn.cmd(cmd, key)


def fig_b7(h):
    runs = RESULTS.setdefault("B7", [])
    configs = ["plain", "bisync", "native"]
    for rep in range(REPEATS):
        log(f"B7 rep {rep + 1}/{REPEATS}")
        topo = {"plain": Plain(h, "b7-plain"), "bisync": Bisync(h, "b7-bisync"), "native": Native(h, "b7-native")}
        try:
            for variant in ("r", "nor"):
                for test in ("hset", "lpush", "sadd"):
                    for cfg in rotated(configs, rep):
                        t = topo[cfg]
                        t.a.c.cmd("FLUSHALL")
                        if t.drain() is None:
                            h.note("B7", f"{cfg}: peer still busy before {test}")
                        calls0 = cmdstat_calls(t.a.c, test)
                        s0 = t.a.status() if cfg == "bisync" else None
                        o0 = t.offsets()[0] if cfg == "native" else None
                        args = ["-t", test, "-n", str(B7_WRITES), "-P", str(B7_PIPELINE), "-c", "50"]
                        if variant == "r":
                            args += ["-r", "1000000"]
                        rps, el, completed = redis_benchmark(t.a.port, args, timeout=B7_TIMEOUT)
                        writes = cmdstat_calls(t.a.c, test) - calls0
                        size = key_size(t.a.c, test, variant)
                        row = {"rep": rep, "variant": variant, "test": test, "config": cfg, "rps": rps,
                               "completed": completed, "writes": writes, "key_size": size, "seconds": el}
                        drain = t.drain(B7_DRAIN_TIMEOUT)
                        row["drain_s"] = drain
                        if cfg == "bisync":
                            s1 = t.a.status()
                            row["bytes_sent"] = s1["bytes_sent"] - s0["bytes_sent"]
                            row["bytes_per_write"] = row["bytes_sent"] / max(writes, 1)
                            row["ops_captured"] = s1["ops_captured"] - s0["ops_captured"]
                            if drain is None:
                                h.note("B7", f"module peer did not catch up within {B7_DRAIN_TIMEOUT:g}s after "
                                             f"{test} ({variant}); pair restarted")
                                t.stop()
                                topo["bisync"] = Bisync(h, "b7-bisync")
                        if cfg == "native":
                            row["bytes_sent"] = t.offsets()[0] - o0
                            row["bytes_per_write"] = row["bytes_sent"] / max(writes, 1)
                        if not completed:
                            h.note("B7", f"{cfg} {test} ({'-r 1000000' if variant == 'r' else 'no -r'}) hit the "
                                         f"{B7_TIMEOUT}s cap before {B7_WRITES} writes")
                        runs.append(row)
                        log(f"  B7 {variant:3s} {test:5s} {cfg:6s} {rps:9.0f} rps writes={writes} size={size} "
                            f"B/write={row.get('bytes_per_write', 0):.0f} drain={rnd(drain, 2)} s")
        finally:
            for t in topo.values():
                t.stop()


# B7S: one key of a given size, then writes into it. Custom commands (identical to redis-benchmark's
# own -t hset / -t sadd; it has no zincrby test) so that all three name their key the same way.
B7S_COMMANDS = {
    "hset": (["hset", "myhash", "element:__rand_int__", "xxx"], "myhash", "HLEN"),
    "sadd": (["sadd", "myset", "element:__rand_int__"], "myset", "SCARD"),
    "zincrby": (["zincrby", "myzset", "1", "element:__rand_int__"], "myzset", "ZCARD"),
    "lpush": (["lpush", "mylist", "element:__rand_int__"], "mylist", "LLEN"),
    "xadd": (["xadd", "mystream", "*", "f", "element:__rand_int__"], "mystream", "XLEN"),
}
_PREFILL = {}


def prefill_cmd(test, size):
    """One command that creates the key with `size` elements named pre:<8 digits> (outside the
    benchmark's element:<12 digits> names, so every measured write touches a new element)."""
    if (test, size) in _PREFILL:
        return _PREFILL[(test, size)]
    key = B7S_COMMANDS[test][1]
    names = [b"pre:%08d" % i for i in range(size)]
    if test == "hset":
        args = [b"HSET", key.encode()] + [x for n in names for x in (n, b"xxx")]
    elif test == "sadd":
        args = [b"SADD", key.encode()] + names
    elif test == "lpush":
        args = [b"RPUSH", key.encode()] + names
    elif test == "xadd":
        # No command adds many entries: one script of `size` XADDs (one event-loop iteration).
        script = b"for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'n', i) end"
        args = [b"EVAL", script, b"1", key.encode(), b"%d" % size]
    else:
        args = [b"ZADD", key.encode()] + [x for i, n in enumerate(names) for x in (b"%d" % (i % 1000), n)]
    _PREFILL[(test, size)] = resp(*args)
    return _PREFILL[(test, size)]


def fig_b7s(h):
    """B7 by key size: the key is created with S elements in one command (one write, replicated
    once), the peer/replica has applied it, then B7S_WRITES writes with -r 1000000 go into it."""
    runs = RESULTS.setdefault("B7S", [])
    configs = ["plain", "bisync", "native"] + (["bisync-before"] if MODULE_BEFORE else [])
    modules = {"bisync": None, "bisync-before": MODULE_BEFORE}
    for rep in range(REPEATS):
        log(f"B7S rep {rep + 1}/{REPEATS}")
        topo = {"plain": Plain(h, "b7s-plain"), "bisync": Bisync(h, "b7s-bisync"), "native": Native(h, "b7s-native")}
        if MODULE_BEFORE:
            topo["bisync-before"] = Bisync(h, "b7s-before", module=MODULE_BEFORE)
        try:
            for size in B7S_SIZES:
                for test in B7S_TESTS:
                    cmd, key, card = B7S_COMMANDS[test]
                    for cfg in rotated(configs, rep):
                        t = topo[cfg]
                        t.a.c.cmd("FLUSHALL")
                        if t.drain() is None:
                            h.note("B7S", f"{cfg}: peer still busy before {test} at {size}")
                        t.a.c.sock.sendall(prefill_cmd(test, size))
                        t.a.c._read()
                        pre = t.drain(DRAIN_TIMEOUT)
                        if pre is None:
                            h.note("B7S", f"{cfg}: the peer did not apply the {size}-element prefill of {test} "
                                          f"within {DRAIN_TIMEOUT:g}s")
                        size0 = t.a.c.cmd(card, key)
                        calls0 = cmdstat_calls(t.a.c, test)
                        s0 = t.a.status() if cfg.startswith("bisync") else None
                        o0 = t.offsets()[0] if cfg == "native" else None
                        args = ["-n", str(B7S_WRITES), "-P", str(B7_PIPELINE), "-c", "50", "-r", "1000000"] + cmd
                        rps, el, completed = redis_benchmark(t.a.port, args, timeout=B7_TIMEOUT)
                        writes = cmdstat_calls(t.a.c, test) - calls0
                        size1 = t.a.c.cmd(card, key)
                        drain = t.drain(B7_DRAIN_TIMEOUT)
                        row = {"rep": rep, "size": size, "test": test, "config": cfg, "rps": rps,
                               "completed": completed, "writes": writes, "size_before": size0,
                               "size_after": size1, "seconds": el, "drain_s": drain, "prefill_s": pre}
                        if cfg.startswith("bisync"):
                            s1 = t.a.status()
                            row["bytes_sent"] = s1["bytes_sent"] - s0["bytes_sent"]
                            row["ops_captured"] = s1["ops_captured"] - s0["ops_captured"]
                            row["ops_sent"] = s1["ops_sent"] - s0["ops_sent"]
                        if cfg == "native":
                            row["bytes_sent"] = t.offsets()[0] - o0
                        if "bytes_sent" in row:
                            row["bytes_per_write"] = row["bytes_sent"] / max(writes, 1)
                        if cfg != "plain" and drain is not None:
                            da = t.a.c.cmd("DEBUG", "DIGEST-VALUE", key)
                            db = t.b.c.cmd("DEBUG", "DIGEST-VALUE", key)
                            row["digest_equal"] = da == db
                            if da != db:
                                h.note("B7S", f"{cfg} {test} at {size}: the key differs between the two sides "
                                              f"after the drain (DEBUG DIGEST-VALUE)")
                        if cfg.startswith("bisync") and drain is None:
                            h.note("B7S", f"{cfg}: module peer did not catch up within {B7_DRAIN_TIMEOUT:g}s after "
                                          f"{test} at {size}; pair restarted")
                            t.stop()
                            topo[cfg] = Bisync(h, "b7s-" + cfg, module=modules[cfg])
                        if not completed:
                            h.note("B7S", f"{cfg} {test} at {size} hit the {B7_TIMEOUT:g}s cap before "
                                          f"{B7S_WRITES} writes")
                        runs.append(row)
                        log(f"  B7S {size:7d} {test:7s} {cfg:6s} {rps:9.0f} rps writes={writes} "
                            f"size {size0}->{size1} B/write={rnd(row.get('bytes_per_write'), 1)} "
                            f"drain={rnd(drain, 2)} s")
        finally:
            for t in topo.values():
                t.stop()


def b8_keys():
    return [b"b8:%04d" % i for i in range(B8_KEYS)]


def run_incr_writers(targets, seconds):
    """Start one `bench.py incr` writer per (port, seed) at the same moment; return their reports."""
    start_at = time.time() + 0.5
    procs = [subprocess.Popen([sys.executable, __file__, "incr", str(port), str(B8_KEYS), str(seconds), str(seed),
                               str(B8_CHUNK), repr(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) for port, seed in targets]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        lines = out.decode(errors="replace").strip().splitlines()
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"INCRBY writer failed (rc={p.returncode}): {err.decode(errors='replace')[-500:]}")
        outs.append(json.loads(lines[-1]))
    return outs


def mget_ints(conn, keys):
    return [int(v) if v is not None else 0 for v in conn.cmd("MGET", *keys)]


def fig_b8(h):
    """Counters from both sides at once: INCRBY on the same B8_KEYS keys, one writer per side for
    B8_SECONDS, then wait until both sides hold the same values and check them against the sums the
    writers sent. plain / native: both writers send to the one writable server (throughput baseline,
    and a check of the writers' own bookkeeping)."""
    runs = RESULTS.setdefault("B8", [])
    keys = b8_keys()
    configs = ["plain", "native"] + [f"bisync-{v}" for v in B8_VARIANTS]
    if MODULE_BEFORE and B8_BEFORE:
        configs += [f"bisync-before-{v}" for v in B8_VARIANTS]
    for rep in range(REPEATS):
        log(f"B8 rep {rep + 1}/{REPEATS}")
        for cfg in rotated(configs, rep):
            if cfg == "plain":
                t = Plain(h, "b8-plain")
            elif cfg == "native":
                t = Native(h, "b8-native")
            else:
                t = Bisync(h, "b8-" + cfg, proxy=cfg.endswith("-partitioned"),
                           module=MODULE_BEFORE if cfg.startswith("bisync-before") else None)
            try:
                seed_a, seed_b = 1000 * rep + 1, 1000 * rep + 2
                row = {"rep": rep, "config": cfg, "keys": B8_KEYS}
                bisync = cfg.startswith("bisync")
                if bisync:
                    s0 = (t.a.status(), t.b.status())
                if cfg.endswith("-partitioned"):
                    t.cut()
                    ok, _ = wait_until(lambda: t.a.status()["link"] != "up" and t.b.status()["link"] != "up", 15, 0.02)
                    if not ok:
                        h.note("B8", "the link did not go down when the proxies were cut")
                targets = [(t.a.port, seed_a), ((t.b.port if bisync else t.a.port), seed_b)]
                wa, wb = run_incr_writers(targets, B8_SECONDS)
                row["sent_a"], row["sent_b"] = wa["sent"], wb["sent"]
                row["rate_a"], row["rate_b"] = wa["sent"] / wa["seconds"], wb["sent"] / wb["seconds"]
                row["rps"] = row["rate_a"] + row["rate_b"]
                row["errors"] = wa["errors"] + wb["errors"]
                sa, sb = wa["sums"], wb["sums"]
                expected = [x + y for x, y in zip(sa, sb)]
                row["expected_total"] = sum(expected)
                t0 = time.perf_counter()
                if cfg.endswith("-partitioned"):
                    t.heal()
                    ok, _ = wait_until(lambda: t.a.status()["link"] == "up" and t.b.status()["link"] == "up",
                                       B8_CONVERGE_TIMEOUT, 0.02)
                    if not ok:
                        h.note("B8", "the link did not come back up after the heal")
                other = t.b if cfg != "plain" else None

                def converged():
                    if other is None:
                        return True
                    if t.drain(0.0) is None:
                        return False
                    return mget_ints(t.a.c, keys) == mget_ints(other.c, keys)
                ok, el = wait_until(converged, B8_CONVERGE_TIMEOUT, 0.02)
                row["converged"] = bool(ok)
                row["converge_s"] = (time.perf_counter() - t0) if ok else None
                va = mget_ints(t.a.c, keys)
                vb = mget_ints(other.c, keys) if other else va
                row["actual_total_a"], row["actual_total_b"] = sum(va), sum(vb)
                row["keys_differ_between_sides"] = sum(1 for x, y in zip(va, vb) if x != y)
                row["keys_correct"] = sum(1 for x, y, e in zip(va, vb, expected) if x == e and y == e)
                row["lost_a"] = row["expected_total"] - sum(va)
                row["lost_b"] = row["expected_total"] - sum(vb)
                row["keys_only_a_side"] = sum(1 for x, a_, b_ in zip(va, sa, sb) if b_ and x == a_)
                row["keys_only_b_side"] = sum(1 for x, a_, b_ in zip(va, sa, sb) if a_ and x == b_)
                if other is not None:
                    row["digest_equal"] = t.a.c.cmd("DEBUG", "DIGEST") == other.c.cmd("DEBUG", "DIGEST")
                if bisync:
                    s1 = (t.a.status(), t.b.status())
                    row["bytes_sent"] = sum(s1[i]["bytes_sent"] - s0[i]["bytes_sent"] for i in (0, 1))
                    row["bytes_per_write"] = row["bytes_sent"] / max(1, row["sent_a"] + row["sent_b"])
                    for k in ("partial_syncs", "full_syncs", "dirty_key_syncs"):
                        if k in s1[0]:
                            row[k] = sum(s1[i][k] - s0[i][k] for i in (0, 1))
                    st = t.a.status()
                    if st.get("last_error"):
                        row["last_error"] = st["last_error"]
                if cfg == "native":
                    row["bytes_per_write"] = None
                row["check"] = (row["errors"] == 0 and row["converged"] and
                                row["keys_correct"] == B8_KEYS)
                if not row["converged"]:
                    h.note("B8", f"{cfg} rep {rep + 1}: the two sides did not converge within "
                                 f"{B8_CONVERGE_TIMEOUT:g} s after the writers stopped (A: "
                                 f"{t.a.status()['applied_seq']} applied of B's {t.b.status()['issued_seq'] if other else '-'} "
                                 f"issued); the values were checked at that moment")
                if not row["check"]:
                    h.note("B8", f"{cfg} rep {rep + 1}: sum check FAILED — {row['keys_correct']}/{B8_KEYS} keys hold "
                                 f"the sum of both sides' increments; {row['lost_a']:,} of "
                                 f"{row['expected_total']:,} increments missing on A, {row['lost_b']:,} on B; "
                                 f"converged={row['converged']}, writer errors={row['errors']}")
                runs.append(row)
                log(f"  B8 {cfg:18s} {row['rps']:9.0f} INCRBY/s (A {row['sent_a']}, B {row['sent_b']}) "
                    f"converge={rnd(row['converge_s'], 2)} s correct keys {row['keys_correct']}/{B8_KEYS} "
                    f"lost A {row['lost_a']} B {row['lost_b']} check={'ok' if row['check'] else 'FAILED'}")
            finally:
                t.stop()


# ----------------------------------------------------------------------------
# report


def fmt(x, digits=0):
    if x is None:
        return "—"
    if isinstance(x, float):
        if digits == 0 and abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:,.{max(digits, 2) if abs(x) < 100 else digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def mmm(xs, digits=0):
    """median (min–max) of a list, formatted."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(statistics.median(xs), digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def ratio_list(runs, key, base_cfg, cfg, value="rps", match=("rep",)):
    """Per-repetition ratios run[cfg]/run[base_cfg] with the other keys equal."""
    out = []
    for r in runs:
        if r.get("config") != cfg:
            continue
        for b in runs:
            if b.get("config") == base_cfg and all(b.get(k) == r.get(k) for k in match):
                if b.get(value) and r.get(value) is not None:
                    out.append(r[value] / b[value])
    return out


def target_mark(ok):
    return "met" if ok else "**not met**"


def machine_info(h):
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    ver = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
            "redis": ver, "python": platform.python_version(), "loadavg": os.getloadavg()}


def write_report(h, out, meta, t_start):
    L = []
    w = L.append
    m = meta["machine"]
    w("# redis-bisync benchmarks\n")
    w("Written by `bash scripts/bench.sh` (harness: `scripts/bench.py`). Every figure compares the module "
      "with a baseline measured **in the same run, on the same machine**, interleaved with it. "
      "Re-run on a quiet machine before quoting numbers.\n")
    if QUICK:
        w("> **QUICK=1 smoke run**: one repetition per figure and small sizes. These numbers only show that the "
          "harness works; they are not the published figures.\n")
    w("## Machine and build\n")
    w("| | |\n|---|---|")
    w(f"| date | {meta['date']} |")
    w(f"| CPUs (`nproc`) | {m['nproc']} |")
    w(f"| CPU model | {m['cpu']} |")
    w(f"| memory | {m['mem']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| load average at start | {' / '.join(f'{x:.2f}' for x in m['loadavg'])} |")
    w(f"| load average at end | {' / '.join(f'{x:.2f}' for x in meta['loadavg_end'])} |")
    ol = meta.get("other_load")
    if ol and ol["samples"]:
        busy = ", ".join(f"`{c}` in {n}" for c, n in ol["busy"]) or "none"
        w(f"| other work during the run | 1-min load average median {ol['load1_median']:.2f}, max "
          f"{ol['load1_max']:.2f} ({ol['samples']} samples, 5 s apart); processes not started by this run that used "
          f"≥ 20 % of a core in a sample: {busy} (of {ol['samples']} samples) |")
    w(f"| Redis | {m['redis']} |")
    w(f"| module | `{meta['module']}` |")
    w(f"| module version (SYNC.STATUS) | {meta.get('module_version', '?')} |")
    if MODULE_BEFORE:
        w(f"| **bisync-before** module (B1, B7S, B8) | `{MODULE_BEFORE}`, version {meta.get('module_before_version', '?')}: "
          f"run as an extra configuration interleaved with the others, so before and after share the same run |")
    w(f"| repository HEAD | {meta['git']} |")
    w(f"| module arguments | `{' '.join(meta['bisync_args'])}` |")
    w(f"| settings | {', '.join(f'{k}={v}' for k, v in ENV.items())} |")
    w(f"| duration | {meta['duration_s']:.0f} s |")
    w("")
    w("## Method\n")
    w(f"""- Every server is a fresh `redis-server` on a free loopback port with `--save "" --appendonly no`, started
  and stopped by the harness (all stopped on exit, also on failure). Module pairs load the module with
  `node-id a|b listen 127.0.0.1:L peer 127.0.0.1:L'` plus the module arguments above (a shared `secret-file`,
  so the link is authenticated as in production, unless `BISYNC_SECRET=0`). The large `backlog-size` and
  `max-pending-keys` keep the bounds out of the way so that the figures measure the steady-state path
  (B5 sets a small backlog on purpose for its dirty-key variant). A native replica is a second
  `redis-server` with `REPLICAOF` to the first (`repl-diskless-sync-delay 0`, no replica output-buffer
  limit, 1 GB replication backlog).
- **Repetitions and interleaving**: each figure runs `REPEATS`={REPEATS} times. Within a repetition every
  configuration runs the same step one after the other, and the order of configurations rotates by one
  position per repetition, so slow drifts in machine load hit every configuration alike. Tables show the
  **median (min–max)** over repetitions.
- **Ratio** = the configuration's value divided by the baseline's value **from the same repetition**
  (plain Redis for throughput, native replication for lag and catch-up, payload bytes for B5, RESP size for
  B6); the table shows the median (min–max) of those per-repetition ratios. For throughput and catch-up
  higher is better; for lag, bytes and memory lower is better.
- Random keys: `-r 1000000` everywhere a figure is about independent keys. Note that redis-benchmark's own
  `-t hset,lpush,sadd` always write **one** key each (`myhash`, `mylist`, `myset`; `-r` only randomises the
  field/member), so B1 runs them as custom commands with a random key (`HSET myhash:__rand_int__
  element:__rand_int__ xxx`, `LPUSH mylist:__rand_int__ xxx`, `SADD myset:__rand_int__ element:__rand_int__`);
  the one-growing-key case is B7. SET and INCR use `-t set` / `-t incr` (3-byte values).
- B1 throughput runs last a fixed time (`B1_SECONDS`) rather than a fixed count, so a slow configuration
  cannot stretch the run: redis-benchmark runs with a huge `-n` and is stopped after that many seconds. The
  figure is measured **on the server**: calls of the command (`INFO commandstats`) between 0.3 s after
  the start (connections up) and the end, divided by that time (redis-benchmark's own overall rate is kept
  in the raw data as `client_rps`). B7 runs a fixed count and reports redis-benchmark's rate. Before
  every run the database is flushed (`FLUSHALL`, replicated) and the harness waits until the peer/replica
  has applied everything, so a run never pays for the previous run's backlog.
- Module catch-up is read from `SYNC.STATUS`: the peer has applied everything when its `applied_seq`
  reaches the writer's `issued_seq`; native catch-up when the replica's `slave_repl_offset` reaches the
  primary's `master_repl_offset`.
- The machine has {m['nproc']} cores shared by both servers, redis-benchmark and the harness; other work
  may run on it. Figures vary by ±10–20 % between runs; compare ratios from the same run, not absolute
  numbers across runs.
""")

    # ---------------- B1
    if RESULTS.get("B1"):
        runs = RESULTS["B1"]
        w("## B1 — write cost\n")
        w(f"redis-benchmark for {B1_SECONDS:g} s per run (rate measured on the server, see Method), `-r 1000000`, "
          f"{' and '.join(f'`{chr(32).join(B1_MODE_ARGS[m])}` ({m})' for m in B1_MODES)}, "
          "against: **plain** Redis; **bisync** = Redis with the module and a live peer (the peer is a second "
          "module server on the same machine, applying everything); **native** = Redis with one native replica "
          "attached; **bisync-unreachable** = the module with its peer address pointing at a port where nothing "
          "listens (capture, batching and buffering only; the backlog never fills). Ratio = requests/s ÷ plain "
          "requests/s of the same repetition. *drain* = seconds the peer/replica needed after the run to apply "
          "what was written.\n")
        w("| mode | test | config | requests/s | ratio to plain | drain after run (s) | link bytes per write |")
        w("|---|---|---|---|---|---|---|")
        for mode in B1_MODES:
            for test in B1_TESTS:
                for cfg in ["plain", "bisync", "native", "bisync-unreachable", "bisync-before"]:
                    rs = [r for r in runs if r["mode"] == mode and r["test"] == test and r["config"] == cfg]
                    if not rs:
                        continue
                    sub = [r for r in runs if r["mode"] == mode and r["test"] == test]
                    ratios = ratio_list(sub, "rps", "plain", cfg)
                    bpw = [r["bytes_sent"] / r["writes"] for r in rs if r.get("bytes_sent") and r.get("writes")]
                    w(f"| {mode} | {test} | {cfg} | {mmm([r['rps'] for r in rs])} | "
                      f"{mmm(ratios, 2) if cfg != 'plain' else '1'} | "
                      f"{mmm([r['drain_s'] for r in rs], 2) if cfg in ('bisync', 'native', 'bisync-before') else ''} | "
                      f"{mmm(bpw, 1) if cfg in ('bisync', 'bisync-before') else ''} |")
        w("")
        sub = [r for r in runs if r["mode"] == "P16" and r["test"] == "set"]
        if sub:
            rb = median(ratio_list(sub, "rps", "plain", "bisync"))
            rn = median(ratio_list(sub, "rps", "plain", "native"))
            ru = median(ratio_list(sub, "rps", "plain", "bisync-unreachable"))
            w("Targets (SET, P16):\n")
            if rb is not None and rn is not None:
                w(f"- module with live peer ≥ native-replica ratio: {rb:.2f} vs {rn:.2f} — {target_mark(rb >= rn)}")
            if ru is not None:
                w(f"- peer unreachable ≥ 0.85 of plain: {ru:.2f} — {target_mark(ru >= 0.85)}")
            w("")
        lines = []
        for test in ("incr", "hset", "sadd", "zadd"):
            sub = [r for r in runs if r["mode"] == "P16" and r["test"] == test]
            rb = median(ratio_list(sub, "rps", "plain", "bisync"))
            rn = median(ratio_list(sub, "rps", "plain", "native"))
            rbb = median(ratio_list(sub, "rps", "plain", "bisync-before"))
            if rb is not None and rn is not None:
                lines.append(f"- {test.upper()}: {rb:.2f} vs 0.9 × {rn:.2f} = {0.9 * rn:.2f} — "
                             f"{target_mark(rb >= 0.9 * rn)}"
                             + (f" (bisync-before: {rbb:.2f})" if rbb is not None else ""))
        if lines:
            w("Targets (issue 10, P16, live peer ≥ 0.9 × native replication's ratio):\n")
            L.extend(lines)
            w("")
        w("*link bytes per write* = the module's `bytes_sent` delta over the run and its drain ÷ writes the "
          "server executed (`INFO commandstats`).\n")

    # ---------------- B2
    if RESULTS.get("B2"):
        runs = RESULTS["B2"]
        w("## B2 — end-to-end lag\n")
        w(f"A Python client (one connection) writes `SET lag:<tag>:<i> <timestamp>` on server A, then a second "
          f"connection polls `EXISTS` on the other side (the module's peer, or the native replica) every ~0.1–0.2 ms "
          f"until the key is there; lag = time from just before sending the SET until the key is seen (it includes "
          f"one SET round trip and one poll round trip, tens of µs on loopback). {B2_SAMPLES} samples per run, "
          f"{B2_GAP_MS:g} ms apart. *Under load*: a separate paced writer process (`bench.py load`) sends "
          f"~{B2_LOAD_RATE:,} SET/s of random keys (`bg:<0..999999>`, 8-byte values) to A in pipelined chunks every "
          f"5 ms (redis-benchmark has no rate limit); the achieved rate is measured on the server "
          f"(`cmdstat_set`). Ratio = module ÷ native of the same repetition (lower is better).\n")
        w("| condition | config | p50 ms | p99 ms | max ms | p99 ratio to native | background writes/s |")
        w("|---|---|---|---|---|---|---|")
        for load in ("idle", "load"):
            for cfg in ("native", "bisync"):
                rs = [r for r in runs if r["load"] == load and r["config"] == cfg]
                if not rs:
                    continue
                sub = [r for r in runs if r["load"] == load]
                rat = ratio_list(sub, "p99", "native", cfg, value="p99") if cfg != "native" else []
                w(f"| {load} | {cfg} | {mmm([r['p50'] for r in rs], 3)} | {mmm([r['p99'] for r in rs], 3)} | "
                  f"{mmm([r['max'] for r in rs], 3)} | {mmm(rat, 2) if rat else ('1' if cfg == 'native' else '—')} | "
                  f"{mmm([r['bg_rate'] for r in rs]) if load == 'load' else '0'} |")
        w("")
        for load in ("idle", "load"):
            bp = median([r["p99"] for r in runs if r["load"] == load and r["config"] == "bisync"])
            npp = median([r["p99"] for r in runs if r["load"] == load and r["config"] == "native"])
            if bp is not None and npp is not None:
                lim = 2 * npp + 1.0
                w(f"- Target ({load}): module p99 ≤ 2 × native p99 + 1 ms: {bp:.3f} ms vs limit {lim:.3f} ms — "
                  f"{target_mark(bp <= lim)}")
        w("")

    # ---------------- B3
    if RESULTS.get("B3"):
        runs = RESULTS["B3"]
        w("## B3 — catch-up after a stall\n")
        w(f"The peer (module) or the replica (native) is stopped with SIGSTOP; `redis-benchmark -t set -n {B3_SETS:,} "
          f"-r 1000000 -P 16 -c 50` writes to A; then SIGCONT, and the harness polls every 10 ms until the peer has "
          f"applied everything (module: peer `applied_seq` ≥ A's `issued_seq`; native: replica offset ≥ primary "
          f"offset). Catch-up rate = SETs written during the stall ÷ seconds from SIGCONT to caught up; *applied "
          f"ops/s* for the module counts key images applied (`ops_applied`; a few SETs to the same key in one "
          f"event-loop iteration coalesce into one image). Ratio = module ÷ native rate of the same repetition "
          f"(higher is better). A stall longer than the module's 10 s link read timeout drops the link; the "
          f"catch-up then includes the reconnect and partial resync.\n")
        w("| config | catch-up s | SETs/s caught up | applied ops/s | ratio to native | write rate during stall | "
          "acked caught up after s |")
        w("|---|---|---|---|---|---|---|")
        for cfg in ("native", "bisync"):
            rs = [r for r in runs if r["config"] == cfg]
            if not rs:
                continue
            rat = ratio_list(runs, "sets_s", "native", cfg, value="sets_s") if cfg != "native" else []
            w(f"| {cfg} | {mmm([r['catchup_s'] for r in rs], 2)} | {mmm([r['sets_s'] for r in rs])} | "
              f"{mmm([r['applied_ops_s'] for r in rs])} | {mmm(rat, 2) if rat else ('1' if cfg == 'native' else '—')} | "
              f"{mmm([r['write_rps_while_stalled'] for r in rs])} | "
              f"{mmm([r.get('acked_after_s') for r in rs], 2) if cfg == 'bisync' else ''} |")
        w("")
        rat = median(ratio_list(runs, "sets_s", "native", "bisync", value="sets_s"))
        if rat is not None:
            w(f"- Target: ≥ 0.5 × native catch-up rate: {rat:.2f} — {target_mark(rat >= 0.5)}")
        miss = [r for r in runs if r["config"] == "bisync" and r.get("acked_after_s") is None]
        if miss:
            w(f"- In {len(miss)} of {len([r for r in runs if r['config'] == 'bisync'])} module runs `acked_seq` "
              f"did not reach `issued_seq` within {ACK_TIMEOUT:g} s after the peer had applied everything (—).")
        w("")

    # ---------------- B4
    if RESULTS.get("B4"):
        runs = RESULTS["B4"]
        w("## B4 — full sync\n")
        w(f"A server holds `DEBUG POPULATE {B4_KEYS:,} key {VALUE_SIZE}`; an empty server joins it; time until it "
          f"holds the whole dataset. **native**: the empty server runs `REPLICAOF` (diskless sync, delay 0); timed "
          f"from the command until `master_link_status:up` and `master_sync_in_progress:0`. **bisync**: the holder "
          f"is a module server whose peer address is free; a fresh, empty module server is started on that address "
          f"(first contact: the module's authoritative full resync, which streams the source's dataset by SCAN); "
          f"timed from the moment the new server answers PING until its `full_syncs` counter reaches 1 (the resync "
          f"and its final sweep are done), so it includes the link's connect and handshake. A new empty server is "
          f"used in every repetition. Ratio = module seconds ÷ native seconds of the same repetition (lower is "
          f"better). (`DEBUG POPULATE` fires no keyspace events, so this is the only figure where it can load the "
          f"module's data: a full resync reads the keyspace itself.)\n")
        w("| config | keys | seconds | keys/s | ratio to native |")
        w("|---|---|---|---|---|")
        for cfg in ("native", "bisync"):
            rs = [r for r in runs if r["config"] == cfg]
            if not rs:
                continue
            rat = ratio_list(runs, "seconds", "native", cfg, value="seconds") if cfg != "native" else []
            w(f"| {cfg} | {mmm([r['keys'] for r in rs])} | {mmm([r['seconds'] for r in rs], 2)} | "
              f"{mmm([r['keys_s'] for r in rs])} | {mmm(rat, 2) if rat else ('1' if cfg == 'native' else '—')} |")
        w("")
        rr = median(ratio_list(runs, "seconds", "native", "bisync", value="seconds"))
        if rr is not None:
            w(f"- Target: ≤ 2 × native: {rr:.2f} — {target_mark(rr <= 2)}")
            w("")

    # ---------------- B5
    if RESULTS.get("B5"):
        runs = RESULTS["B5"]
        w("## B5 — outage cost\n")
        w(f"{B5_KEYS:,} keys (`SET b5:<8 digits> <{VALUE_SIZE} bytes>`, loaded with `redis-cli --pipe` so the "
          f"module captures them; `DEBUG POPULATE` fires no keyspace events and the peer would never see its keys) "
          f"are replicated to the other side; then the link is cut (both directions run through a small TCP proxy "
          f"in the harness, which closes every connection and refuses new ones); {B5_CHANGES:,} distinct random keys "
          f"get a new value of the same size on A; the link is healed and the harness waits until every changed key "
          f"has its new value on the other side (at most {B5_TIMEOUT:g} s). **Bytes** = A's `bytes_sent` delta from "
          f"just before the cut until caught up (module), or the bytes the proxy forwarded primary → replica "
          f"(native: PSYNC continuation from the replication backlog). **Payload** = Σ (key length + value length) "
          f"of the changed keys' final values. Ratio = bytes ÷ payload (lower is better). Variants: "
          f"**bisync-partial** — large backlog, each key written once, the reconnect resends the missed batches; "
          f"**bisync-dirty-key** — each key written {B5_DIRTY_ROUNDS} times during the outage (separate event-loop "
          f"iterations) with `bisync.backlog-size` set to 2 × the RESP size of one round, so the backlog overflows "
          f"but one image per changed key would fit: the reconnect must resend only the current images of the keys "
          f"not acknowledged (DESIGN §4, cost ∝ keys changed). *Wire bytes* = all bytes through the proxies, both "
          f"directions (handshake, acks and pings included).\n")
        w("| variant | writes per key | payload bytes | bytes sent | ratio to payload | wire bytes (proxy) | "
          "overhead per changed key | resyncs (partial/dirty-key/full) | heal → all keys there, s |")
        w("|---|---|---|---|---|---|---|---|---|")
        for variant in ("native", "bisync-partial", "bisync-dirty-key"):
            rs = [r for r in runs if r["variant"] == variant]
            if not rs:
                continue
            over = [(r["bytes_sent"] - r["payload"]) / r["changes"] for r in rs if r["ratio"] is not None]
            kinds = "" if variant == "native" else "/".join(
                mmm([r.get(k) for r in rs]) for k in ("partial_syncs", "dirty_key_syncs", "full_syncs"))
            w(f"| {variant} | {rs[0]['writes_per_key']} | {mmm([r['payload'] for r in rs])} | "
              f"{mmm([r['bytes_sent'] for r in rs])} | "
              f"{mmm([r['ratio'] for r in rs], 2) if any(r['ratio'] is not None for r in rs) else 'did not catch up'} | "
              f"{mmm([r['wire_bytes'] for r in rs])} | {mmm(over, 1)} | "
              f"{kinds} | {mmm([r['heal_to_applied_s'] for r in rs], 2)} |")
        w("")
        for variant in ("bisync-partial", "bisync-dirty-key"):
            rr = median([r["ratio"] for r in runs if r["variant"] == variant])
            if rr is not None:
                w(f"- Target ({variant}): ratio ≤ 1.5: {rr:.2f} — {target_mark(rr <= 1.5)}")
        w("")

    # ---------------- B6
    if RESULTS.get("B6"):
        runs = RESULTS["B6"]
        w("## B6 — memory\n")
        w(f"A plain server and a module pair (link through the proxy) each load {B6_KEYS:,} keys "
          f"(`SET b6:<8 digits> <{VALUE_SIZE} bytes>`); after the peer has applied them the harness waits up to "
          f"{ACK_TIMEOUT:g} s for A's `pending_keys` to reach 0. **Metadata per key once acknowledged** = (A's RSS "
          f"growth − the plain server's RSS growth) ÷ keys (`VmRSS` from `/proc/<pid>/status`; the module allocates "
          f"with the system allocator, which `used_memory` does not see). Then the link is cut and every key is "
          f"overwritten once with a same-size value on A and on the plain server (the dataset does not grow). "
          f"**Per buffered change** = growth of A's `backlog_bytes`, and (A's RSS growth − plain's RSS growth), "
          f"÷ changes captured. RESP size = bytes of one `SET` command in RESP ({runs[0]['resp_size']} B here). "
          f"Ratio = bytes per buffered change ÷ RESP size (lower is better). RSS figures are noisy (allocator "
          f"page reuse); the backlog figure is exact.\n")
        w("| figure | value | ratio to RESP size |")
        w("|---|---|---|")
        rsz = runs[0]["resp_size"]
        w(f"| backlog bytes per buffered change | {mmm([r['backlog_per_change'] for r in runs], 1)} | "
          f"{mmm([r['backlog_per_change'] / rsz for r in runs], 2)} |")
        w(f"| RSS bytes per buffered change (A − plain) | {mmm([r['rss_per_change'] for r in runs], 1)} | "
          f"{mmm([r['rss_per_change'] / rsz for r in runs], 2)} |")
        w(f"| used_memory bytes per buffered change (A − plain) | {mmm([r['used_memory_per_change'] for r in runs], 1)} | |")
        w(f"| changes captured during the outage | {mmm([r['buffered_changes'] for r in runs])} | |")
        w(f"| pending_keys during the outage | {mmm([r['pending_keys_during_outage'] for r in runs])} | |")
        w(f"| pending_keys after load + peer applied (must be 0) | {mmm([r['pending_keys_after_load'] for r in runs])} | |")
        w(f"| backlog_bytes after load + peer applied | {mmm([r['backlog_after_load'] for r in runs])} | |")
        w(f"| metadata bytes per key once acknowledged, RSS (A − plain) | {mmm([r['meta_per_key_rss'] for r in runs], 1)} | |")
        w(f"| same, for the peer B (holds no un-acked writes) | {mmm([r['peer_meta_per_key_rss'] for r in runs], 1)} | |")
        w(f"| same, used_memory (A − plain) | {mmm([r['meta_per_key_used_memory'] for r in runs], 1)} | |")
        w("")
        bpc = median([r["backlog_per_change"] for r in runs])
        rpc = median([r["rss_per_change"] for r in runs])
        pk = median([r["pending_keys_after_load"] for r in runs])
        w(f"- Target: ≤ 2 × RESP size per buffered change: backlog {bpc / rsz:.2f}×, RSS {rpc / rsz:.2f}× — "
          f"{target_mark(max(bpc, rpc) <= 2 * rsz)}")
        w(f"- Target: 0 bytes of metadata per key once acknowledged: pending_keys after load = {fmt(pk)} — "
          f"{target_mark(pk == 0)}")
        w("")

    # ---------------- B7
    if RESULTS.get("B7"):
        runs = RESULTS["B7"]
        w("## B7 — large collections (one key that keeps growing)\n")
        w(f"redis-benchmark's own `-t hset`, `-t lpush`, `-t sadd`, `-n {B7_WRITES:,} -P {B7_PIPELINE} -c 50`, each "
          f"from an empty database, capped at {B7_TIMEOUT:g} s (a capped run reports the rate it reached and the "
          f"writes it completed; its key is then smaller than the plain run's, which flatters the module). "
          f"**With `-r 1000000`** all three write one key each (`myhash`, `myset` get up to {B7_WRITES:,} random "
          f"fields/members, `mylist` grows by one element per write). **Without `-r`** only `mylist` grows: `HSET "
          f"myhash element:__rand_int__` and `SADD myset element:__rand_int__` rewrite one field/member. redis-benchmark's values are constant (`xxx`), so list images compress very well "
          f"(DUMP compresses quicklist nodes with LZF) and understate the bytes a real list would cost. Ratio = "
          f"requests/s ÷ plain of the same repetition. Bytes per write = module `bytes_sent` (or native "
          f"`master_repl_offset`) delta ÷ writes completed. *drain* = seconds the peer needed after the run.\n")
        w("| keys | test | config | requests/s | ratio to plain | writes done | final key size | bytes per write | "
          "drain s |")
        w("|---|---|---|---|---|---|---|---|---|")
        for variant in ("r", "nor"):
            for test in ("hset", "lpush", "sadd"):
                sub = [r for r in runs if r["variant"] == variant and r["test"] == test]
                for cfg in ("plain", "native", "bisync"):
                    rs = [r for r in sub if r["config"] == cfg]
                    if not rs:
                        continue
                    rat = ratio_list(sub, "rps", "plain", cfg) if cfg != "plain" else []
                    w(f"| {'-r 1000000' if variant == 'r' else 'no -r'} | {test} | {cfg} | {mmm([r['rps'] for r in rs])} | "
                      f"{mmm(rat, 3) if rat else '1'} | {mmm([r['writes'] for r in rs])} | "
                      f"{mmm([r['key_size'] for r in rs])} | "
                      f"{mmm([r.get('bytes_per_write') for r in rs], 1) if cfg != 'plain' else ''} | "
                      f"{mmm([r['drain_s'] for r in rs], 2) if cfg != 'plain' else ''} |")
        w("")

    # ---------------- B7S
    if RESULTS.get("B7S"):
        runs = RESULTS["B7S"]
        sizes = sorted({r["size"] for r in runs})
        tests = [t for t in B7S_TESTS if any(r["test"] == t for r in runs)]
        w("## B7 by key size — writes into one big hash / set / sorted set\n")
        w(f"The key is created with S elements in **one** command (`HSET myhash pre:<i> xxx …`, `SADD myset "
          f"pre:<i> …`, `ZADD myzset <i mod 1000> pre:<i> …`: one write, replicated once) and the harness waits "
          f"until the peer/replica has applied it; then `redis-benchmark -n {B7S_WRITES:,} -r 1000000 "
          f"-P {B7_PIPELINE} -c 50` runs `HSET myhash element:__rand_int__ xxx` (as `-t hset`), `SADD myset "
          f"element:__rand_int__` (as `-t sadd`) or `ZINCRBY myzset 1 element:__rand_int__` (redis-benchmark has "
          f"no zincrby test), capped at {B7_TIMEOUT:g} s. Every measured write touches a new element (the "
          f"prefilled names differ), so the key grows by ≈ {B7S_WRITES:,} during the run: *size* shows it "
          f"before → after. Sizes: {', '.join(f'{s:,}' for s in sizes)}. Ratio = requests/s ÷ plain of the same "
          f"repetition; *÷ native* = the module's requests/s ÷ native replication's of the same repetition (the "
          f"ratio of the two ratios). Bytes per write = module `bytes_sent` (or native `master_repl_offset`) "
          f"delta over the run and its drain ÷ writes executed (`INFO commandstats`); *÷ native* likewise. After "
          f"the drain the harness compares `DEBUG DIGEST-VALUE` of the key on both sides.\n")
        w("| size at start | test | config | requests/s | ratio to plain | ÷ native (rate) | size before → after | "
          "bytes per write | ÷ native (bytes) | drain s |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for size in sizes:
            for test in tests:
                sub = [r for r in runs if r["size"] == size and r["test"] == test]
                for cfg in ("plain", "native", "bisync", "bisync-before"):
                    rs = [r for r in sub if r["config"] == cfg]
                    if not rs:
                        continue
                    rat = ratio_list(sub, "rps", "plain", cfg) if cfg != "plain" else []
                    vsn = ratio_list(sub, "rps", "native", cfg) if cfg.startswith("bisync") else []
                    bvn = ratio_list(sub, "b", "native", cfg, value="bytes_per_write") if cfg.startswith("bisync") else []
                    w(f"| {size:,} | {test} | {cfg} | {mmm([r['rps'] for r in rs])} | "
                      f"{mmm(rat, 3) if rat else '1'} | {mmm(vsn, 2) if vsn else ''} | "
                      f"{fmt(median([r['size_before'] for r in rs]))} → {fmt(median([r['size_after'] for r in rs]))} | "
                      f"{mmm([r.get('bytes_per_write') for r in rs], 1) if cfg != 'plain' else ''} | "
                      f"{mmm(bvn, 2) if bvn else ''} | "
                      f"{mmm([r['drain_s'] for r in rs], 2) if cfg != 'plain' else ''} |")
        w("")
        w("Targets (issue 10): module ratio ≥ 0.8 × native's ratio, module bytes per write ≤ 2 × native's, "
          "cost per write independent of the key's size:\n")
        for test in tests:
            for size in sizes:
                sub = [r for r in runs if r["size"] == size and r["test"] == test]
                rb = median(ratio_list(sub, "rps", "plain", "bisync"))
                rn = median(ratio_list(sub, "rps", "plain", "native"))
                bb = median([r.get("bytes_per_write") for r in sub if r["config"] == "bisync"])
                bn = median([r.get("bytes_per_write") for r in sub if r["config"] == "native"])
                parts = []
                if rb is not None and rn is not None:
                    parts.append(f"ratio {rb:.3f} vs 0.8 × {rn:.3f} = {0.8 * rn:.3f} — {target_mark(rb >= 0.8 * rn)}")
                if bb is not None and bn:
                    parts.append(f"bytes/write {bb:,.1f} vs 2 × {bn:,.1f} = {2 * bn:,.1f} — {target_mark(bb <= 2 * bn)}")
                if parts:
                    w(f"- {test} at {size:,}: " + "; ".join(parts))
            if len(sizes) >= 2:
                lo, hi = sizes[0], sizes[-1]
                rlo = median(ratio_list([r for r in runs if r["size"] == lo and r["test"] == test], "rps", "plain", "bisync"))
                rhi = median(ratio_list([r for r in runs if r["size"] == hi and r["test"] == test], "rps", "plain", "bisync"))
                blo = median([r.get("bytes_per_write") for r in runs if r["size"] == lo and r["test"] == test and r["config"] == "bisync"])
                bhi = median([r.get("bytes_per_write") for r in runs if r["size"] == hi and r["test"] == test and r["config"] == "bisync"])
                if None not in (rlo, rhi, blo, bhi) and rlo and blo:
                    ok = rhi >= 0.8 * rlo and bhi <= 1.25 * blo
                    w(f"- {test}, size independence ({hi:,} vs {lo:,}): ratio {rhi:.3f} vs {rlo:.3f} "
                      f"(×{rhi / rlo:.2f}), bytes/write {bhi:,.1f} vs {blo:,.1f} (×{bhi / blo:.2f}) — "
                      f"{target_mark(ok)} (counted as met when the ratio at {hi:,} is ≥ 0.8 × the ratio at {lo:,} "
                      f"and bytes/write at most 1.25 ×)")
        w("")

    # ---------------- B8
    if RESULTS.get("B8"):
        runs = RESULTS["B8"]
        w("## B8 — counters from both sides at once\n")
        w(f"`INCRBY b8:<0..{B8_KEYS - 1}> <1..9>` on the same {B8_KEYS:,} keys from both sides at once for "
          f"{B8_SECONDS:g} s: one writer process per side (`bench.py incr`, one connection, {B8_CHUNK} commands "
          f"per pipelined round trip, keys in shuffled rounds over all {B8_KEYS:,} and random deltas, from 64 "
          f"pre-built chunks whose per-key sums are known, so each writer knows exactly what it added to every "
          f"key; one pass over the chunks touches every key). Then the harness waits (at most "
          f"{B8_CONVERGE_TIMEOUT:g} s) until both sides hold the same values for all keys and each side has "
          f"applied everything the other issued, and **checks every key against the sum of both writers' "
          f"increments**. **bisync-live**: the link is up throughout. **bisync-partitioned**: the link (through "
          f"the harness's proxy) is cut before the writers start and healed after they stop, so every key is "
          f"changed on both sides concurrently. **plain** and **native**: both writers send to the one writable "
          f"server (native replication cannot take writes on the replica); they are the throughput baseline and "
          f"check the writers' own bookkeeping. *Slower writer's share* = min(A, B) ÷ (A + B) of the writes "
          f"(0.5 = both sides wrote equally; near 0 = one side's writes were starved). The writers are Python, so the rate is partly client-bound. "
          f"Ratio = INCRBY/s (both writers) ÷ plain of the same repetition.\n")
        w("| config | INCRBY/s (both writers) | ratio to plain | writes A + B | slower writer's share | converged after s | "
          "keys = exact sum | sum of increments missing (on A / on B) | keys holding one side's sum only | "
          "link bytes per write | sum check passed |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg in ["plain", "native"] + [f"bisync-{v}" for v in B8_VARIANTS] + [f"bisync-before-{v}" for v in B8_VARIANTS]:
            rs = [r for r in runs if r["config"] == cfg]
            if not rs:
                continue
            rat = ratio_list(runs, "rps", "plain", cfg) if cfg != "plain" else []
            okc = sum(1 for r in rs if r["check"])
            w(f"| {cfg} | {mmm([r['rps'] for r in rs])} | {mmm(rat, 2) if rat else '1'} | "
              f"{mmm([r['sent_a'] + r['sent_b'] for r in rs])} | "
              f"{mmm([min(r['sent_a'], r['sent_b']) / max(1, r['sent_a'] + r['sent_b']) for r in rs], 3)} | "
              f"{mmm([r['converge_s'] for r in rs], 2) if cfg != 'plain' else ''} | "
              f"{mmm([r['keys_correct'] for r in rs])} / {B8_KEYS:,} | "
              f"{mmm([r['lost_a'] for r in rs])} / {mmm([r['lost_b'] for r in rs])} | "
              f"{mmm([r['keys_only_a_side'] + r['keys_only_b_side'] for r in rs])} | "
              f"{mmm([r.get('bytes_per_write') for r in rs], 1) if cfg.startswith('bisync') else ''} | "
              f"{okc} of {len(rs)} runs{'' if okc == len(rs) else ' (**not all**)'} |")
        w("")
        for cfg in [f"bisync-{v}" for v in B8_VARIANTS]:
            rs = [r for r in runs if r["config"] == cfg]
            if rs:
                okc = sum(1 for r in rs if r["check"])
                w(f"- Target ({cfg}): after convergence every key equals the sum of all increments made on both "
                  f"sides: {okc} of {len(rs)} runs — {target_mark(okc == len(rs))}")
        w("")

    # ---------------- health
    w("## Observations from this run\n")
    if h.notes:
        for fig, text in h.notes:
            w(f"- {fig}: {text}")
    else:
        w("- none recorded.")
    if h.warnings:
        w("")
        w("Module warnings in the servers' logs (count, example):\n")
        for norm, (cnt, ex) in sorted(h.warnings.items(), key=lambda kv: -kv[1][0])[:15]:
            w(f"- {cnt} × `{ex[:300]}`")
    w("")
    w(f"Raw per-run data: `{meta['json']}`.\n")
    Path(out).write_text("\n".join(L))


# ----------------------------------------------------------------------------
# main


def loader_main(port, rate):
    """Paced background writer for B2: SET bg:<rand> xxxxxxxx at `rate` per second."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    s = socket.create_connection((HOST, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rate = float(rate)
    tick = 0.005
    sent = 0
    t0 = time.perf_counter()
    nxt = t0
    rnd = random.Random()
    while not stop[0]:
        now = time.perf_counter()
        due = int((now - t0) * rate) - sent
        if due > 0:
            due = min(due, int(rate * 0.05) + 1)
            parts = []
            for _ in range(due):
                k = b"bg:%d" % rnd.randrange(1_000_000)
                parts.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$8\r\nxxxxxxxx\r\n" % (len(k), k))
            s.sendall(b"".join(parts))
            need = 5 * due
            while need > 0:
                got = s.recv(min(need, 1 << 16))
                if not got:
                    stop[0] = True
                    break
                need -= len(got)
            sent += due
        nxt += tick
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.perf_counter()
    el = time.perf_counter() - t0
    print(f"sent={sent} seconds={el:.3f} rate={sent / el if el else 0:.1f}", flush=True)


def incr_main(port, keys, seconds, seed, chunk, start_at):
    """B8 writer: INCRBY b8:<0..keys-1> <1..9> for `seconds`, pipelined `chunk` commands at a time,
    from 64 pre-built chunks (every key at least once per pass over them) whose per-key sums are known; prints one JSON line with what it sent
    per key (exact: a chunk counts once all its replies are read)."""
    keys, chunk, seconds, start_at = int(keys), int(chunk), float(seconds), float(start_at)
    rng = random.Random(int(seed))
    # key order: shuffled rounds over all keys, so that one pass over the 64 chunks increments every key
    order = []
    while len(order) < 64 * chunk:
        r = list(range(keys))
        rng.shuffle(r)
        order.extend(r)
    bufs, sums = [], []
    for c in range(64):
        per = {}
        parts = []
        for j in range(chunk):
            k = order[c * chunk + j]
            d = rng.randint(1, 9)
            per[k] = per.get(k, 0) + d
            key = b"b8:%04d" % k
            parts.append(b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n$1\r\n%d\r\n" % (len(key), key, d))
        bufs.append(b"".join(parts))
        sums.append(per)
    counts = [0] * len(bufs)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    s = socket.create_connection((HOST, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while time.time() < start_at:
        time.sleep(0.001)
    errors = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    i = 0
    while not stop[0] and time.perf_counter() < end:
        s.sendall(bufs[i])
        got = []
        lines = 0
        while lines < chunk:
            data = s.recv(1 << 16)
            if not data:
                raise SystemExit("connection closed")
            got.append(data)
            lines += data.count(b"\n")
        reply = b"".join(got)
        if reply.startswith(b"-") or b"\n-" in reply:
            errors += reply.startswith(b"-") + reply.count(b"\n-")
        counts[i] += 1
        i = (i + 1) % len(bufs)
    el = time.perf_counter() - t0
    total = [0] * keys
    for c, per in zip(counts, sums):
        if c:
            for k, d in per.items():
                total[k] += c * d
    print(json.dumps({"sent": sum(counts) * chunk, "seconds": el, "errors": errors, "sums": total}), flush=True)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "incr":
        incr_main(*sys.argv[2:8])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "render":
        # re-write a report from a results JSON: bench.py render RESULTS.json OUT.md
        # (the settings come from the environment, as for the run itself)
        data = json.loads(Path(sys.argv[2]).read_text())
        RESULTS.update(data["results"])
        h = type("Notes", (), {})()
        h.notes = [tuple(n) for n in data.get("notes", [])]
        h.warnings = {}
        write_report(h, sys.argv[3], data["meta"], 0)
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "load":
        loader_main(sys.argv[2], sys.argv[3])
        return
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--git", default="?")
    a = ap.parse_args()
    if not os.path.exists(a.module):
        sys.exit(f"module not found: {a.module}")
    h = Harness(a.work, os.path.abspath(a.module))
    sampler = BusySampler(h)
    t_start = time.time()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(h), "module": a.module,
            "git": a.git, "bisync_args": BISYNC_ARGS + (["secret-file", "<file>"] if BISYNC_SECRET else []),
            "quick": QUICK, "settings": ENV, "json": a.json}

    def on_signal(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed = None
    interrupted = None
    try:
        probe = Bisync(h, "probe", peer=False)
        meta["module_version"] = probe.a.status().get("version", "?")
        probe.stop()
        if MODULE_BEFORE:
            probe = Bisync(h, "probe-before", peer=False, module=MODULE_BEFORE)
            meta["module_before_version"] = probe.a.status().get("version", "?")
            probe.stop()
        log(f"module {meta['module_version']}; figures {FIGURES}; repeats {REPEATS}; quick={QUICK}")
        for fig, fn in (("B1", fig_b1), ("B2", fig_b2), ("B3", fig_b3), ("B4", fig_b4), ("B5", fig_b5),
                        ("B6", fig_b6), ("B7", fig_b7), ("B7S", fig_b7s), ("B8", fig_b8)):
            if fig in FIGURES:
                t = time.time()
                log(f"== {fig}")
                try:
                    fn(h)
                except (RuntimeError, OSError, ConnectionError, RespError) as e:
                    h.note(fig, f"figure aborted: {type(e).__name__}: {e}".replace("\n", " ")[:600])
                    failed = failed or fig
                    h.stop_all()
                log(f"== {fig} done in {time.time() - t:.0f} s")
    except SystemExit as e:
        interrupted = str(e)
        h.note("run", f"interrupted ({e}); the figures below are partial")
    finally:
        h.stop_all()
    meta["duration_s"] = time.time() - t_start
    meta["loadavg_end"] = os.getloadavg()
    sampler.stop = True
    meta["other_load"] = sampler.summary()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"meta": meta, "results": RESULTS, "notes": h.notes}, indent=1, default=str))
    write_report(h, a.out, meta, t_start)
    log(f"wrote {a.out} and {a.json} in {meta['duration_s']:.0f} s")
    if interrupted:
        sys.exit(interrupted)
    if failed:
        sys.exit(f"figure {failed} failed; see the Observations section of {a.out}")


if __name__ == "__main__":
    main()
