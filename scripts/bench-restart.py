#!/usr/bin/env python3
"""Restart of a node from its RDB after changes: what crosses the link and how long it takes.

Issue 11's figure. A node holding KEYS keys (DEBUG POPULATE, values of VALUE_SIZE bytes) saves
an RDB and is killed (-9); CHANGED keys then change on the survivor; the node is restarted from
that RDB. Measured from the moment the restarted server answers PING (its RDB is loaded):

  bisync    until its `restart_resumes` counter moves (the survivor's `ResumeEnd` applied),
            and the link bytes both ways over that restart (`bytes_sent` of both nodes);
  native    a replica (`--replicaof`) restarted the same way: until `master_link_status:up`
            and its offset equals the primary's (a PSYNC from the replication id and offset
            its RDB carries), and the replication bytes (the primary's offset delta).

Also with `history-size 0`: the survivor cannot name the changed keys, so the restarted node
takes a full resync (what every restart cost before the pairing state was saved).

Variants (bisync only): `own-before`, the CHANGED keys are written on the restarted node just
before its snapshot (both sides hold them: nothing needs to cross); `own-after`, they are
written on it after its snapshot and reach the survivor before the kill (the survivor sends
them back as images). Payload = changed keys × (key length + VALUE_SIZE).

Usage: BISYNC_MODULE=target/release/libredis_bisync.so python3 scripts/bench-restart.py
       [KEYS=1000000] [CHANGED=10000] [REPEATS=3]
"""
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the harness: servers, connections, SYNC.STATUS)
from bench import Conn, RespError, wait_until, log  # noqa: E402

KEYS = int(os.environ.get("KEYS", 1_000_000))
CHANGED = int(os.environ.get("CHANGED", 10_000))
REPEATS = int(os.environ.get("REPEATS", 3))
VALUE_SIZE = bench.VALUE_SIZE
TIMEOUT = 120


def relaunch(srv):
    """Start `srv` again with its command line (same port, dir, RDB) and wait for PING."""
    srv.proc = subprocess.Popen(srv.cmdline, stdout=subprocess.DEVNULL,
                                stderr=open(srv.dir / "stderr", "ab"), start_new_session=True)
    srv.pid = srv.proc.pid
    with open(srv.h.pidfile, "a") as f:
        f.write(f"{srv.pid} {bench.proc_starttime(srv.pid)}\n")
    deadline = time.time() + 60
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited at start:\n{srv.tail()}")
        try:
            c = Conn(srv.port, timeout=2)
            c.cmd("PING")
            c.close()
            break
        except (OSError, ConnectionError, RespError):
            if time.time() > deadline:
                raise RuntimeError(f"{srv.name} did not answer:\n{srv.tail()}")
            time.sleep(0.005)
    srv.c = Conn(srv.port)


def kill9(srv):
    srv.c.close()
    srv.proc.kill()
    srv.proc.wait()


def change(c, keys, tag):
    """SET each key to a new value of VALUE_SIZE bytes, pipelined."""
    for i in range(0, len(keys), 1000):
        cmds = []
        for k in keys[i:i + 1000]:
            v = (f"{tag}:{k}:".encode() + b"w" * VALUE_SIZE)[:VALUE_SIZE]
            cmds.append(("SET", k, v))
        c.pipeline(cmds)


def payload(keys):
    return sum(len(k) + VALUE_SIZE for k in keys)


def stat(srv, field):
    return int(srv.status()[field])


def bisync_runs(h, variant, module_extra=()):
    la, lb = h.free_port(), h.free_port()
    extra = ["--dbfilename", "dump.rdb"]
    a = h.server(f"rs-{variant}-a", extra, module_args=h.bisync_args("a", la, lb, module_extra))
    a.c.cmd("DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_SIZE))
    b = h.server(f"rs-{variant}-b", extra, module_args=h.bisync_args("b", lb, la, module_extra))
    ok, _ = wait_until(lambda: stat(b, "full_syncs") >= 1, TIMEOUT, 0.05)
    if not ok or int(b.c.cmd("DBSIZE")) != KEYS:
        raise RuntimeError("the first full sync did not complete")
    rows = []
    try:
        for rep in range(REPEATS):
            keys = [f"key:{i}" for i in random.sample(range(KEYS), CHANGED)]
            if variant == "own-before":
                change(b.c, keys, f"b{rep}")
            # quiet: both sides acknowledged everything
            wait_until(lambda: stat(a, "pending_keys") == 0 and stat(b, "pending_keys") == 0, TIMEOUT, 0.01)
            b.c.cmd("SAVE")
            sent_a = stat(a, "bytes_sent")
            if variant == "own-after":
                # B's writes after its snapshot reach A; then B dies: A sends them back.
                change(b.c, keys, f"b{rep}")
                wait_until(lambda: stat(b, "pending_keys") == 0, TIMEOUT, 0.005)
                sent_a = stat(a, "bytes_sent")
            kill9(b)
            if variant == "survivor":
                change(a.c, keys, f"a{rep}")
            relaunch(b)
            ok, el = wait_until(lambda: stat(b, "restart_resumes") + stat(b, "full_syncs") >= 1,
                                TIMEOUT, 0.002)
            sent = stat(a, "bytes_sent") - sent_a + stat(b, "bytes_sent")
            resumed = stat(b, "full_syncs") == 0
            same = a.c.cmd("DBSIZE") == b.c.cmd("DBSIZE") and all(
                a.c.cmd("GET", k) == b.c.cmd("GET", k) for k in keys[:200])
            rows.append({"rep": rep, "seconds": el if ok else None, "bytes": sent,
                         "payload": payload(keys), "resumed": resumed, "equal": same,
                         "keys_sent": stat(a, "restart_resume_keys")})
            log(f"  bisync/{variant} rep {rep}: caught up in {el:.3f}s, {sent} bytes "
                f"({sent / payload(keys):.2f} x payload), resumed={resumed}, equal={same}")
    finally:
        a.stop()
        b.stop()
    return rows


def native_runs(h):
    p = h.server("rs-native-p", ["--repl-backlog-size", "256mb", "--repl-diskless-sync", "yes",
                                 "--repl-diskless-sync-delay", "0"])
    p.c.cmd("DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_SIZE))
    r = h.server("rs-native-r", ["--dbfilename", "dump.rdb", "--replicaof", bench.HOST, str(p.port)])

    def synced():
        i = r.c.info("replication")
        if i.get("master_link_status") != "up" or i.get("master_sync_in_progress") != "0":
            return False
        return int(i.get("slave_repl_offset", -1)) == int(p.c.info("replication")["master_repl_offset"])
    ok, _ = wait_until(synced, TIMEOUT, 0.05)
    if not ok:
        raise RuntimeError("the native replica did not sync")
    rows = []
    try:
        for rep in range(REPEATS):
            keys = [f"key:{i}" for i in random.sample(range(KEYS), CHANGED)]
            r.c.cmd("SAVE")
            partial0 = int(p.c.info("stats")["sync_partial_ok"])
            full0 = int(p.c.info("stats")["sync_full"])
            off0 = int(p.c.info("replication")["master_repl_offset"])
            kill9(r)
            change(p.c, keys, f"p{rep}")
            relaunch(r)
            ok, el = wait_until(synced, TIMEOUT, 0.002)
            moved = int(p.c.info("replication")["master_repl_offset"]) - off0
            psync = int(p.c.info("stats")["sync_partial_ok"]) > partial0
            full = int(p.c.info("stats")["sync_full"]) > full0
            rows.append({"rep": rep, "seconds": el if ok else None, "bytes": moved,
                         "payload": payload(keys), "psync": psync, "full": full})
            log(f"  native rep {rep}: caught up in {el:.3f}s, {moved} bytes "
                f"({moved / payload(keys):.2f} x payload), psync={psync}, full={full}")
    finally:
        p.stop()
        r.stop()
    return rows


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main():
    module = os.environ.get("BISYNC_MODULE", "target/release/libredis_bisync.so")
    work = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    h = bench.Harness(work, str(Path(module).resolve()))
    try:
        results = {
            "native": native_runs(h),
            "bisync (changes on the survivor)": bisync_runs(h, "survivor"),
            "bisync (changes on the restarted node before its snapshot)": bisync_runs(h, "own-before"),
            "bisync (changes on the restarted node after its snapshot)": bisync_runs(h, "own-after"),
            "bisync, history-size 0 (changes on the survivor; a full resync)":
                bisync_runs(h, "survivor", ["history-size", "0"]),
        }
    finally:
        h.stop_all()
    print()
    print(f"KEYS={KEYS} CHANGED={CHANGED} VALUE_SIZE={VALUE_SIZE} REPEATS={REPEATS}")
    print("| config | seconds to caught up (median, range) | bytes | bytes ÷ payload | how |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        secs = [r["seconds"] for r in rows]
        ratio = [r["bytes"] / r["payload"] for r in rows]
        if name == "native":
            how = "PSYNC" if all(r.get("psync") for r in rows) else "not all PSYNC"
        elif all(r["equal"] for r in rows):
            how = "resume" if all(r["resumed"] for r in rows) else (
                "full resync" if not any(r["resumed"] for r in rows) else "mixed")
        else:
            how = "NOT EQUAL"
        fs = [s for s in secs if s is not None]
        print(f"| {name} | {median(secs):.3f} ({min(fs):.3f}–{max(fs):.3f}) | "
              f"{median([r['bytes'] for r in rows]):,} | {median(ratio):.2f} | {how} |")


if __name__ == "__main__":
    main()
