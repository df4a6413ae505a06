"""Liveness of the ranks of a multi-process run, and what the launcher says when one fails.

Each rank runs a `RankMonitor`: a daemon thread that samples the main thread's stack four times a
second. A rank whose stack has not moved (and whose phase and collective-call counters have not
changed) for `timeout` seconds is stuck; one blocked inside a collective call gets `grace` more
seconds, because it is most likely waiting for the rank that is really stuck. A stuck rank writes
a report and ends itself (`os._exit`), which the elastic agent sees as a failed worker: it stops
every other rank. Once a second the thread also writes a heartbeat (phase, where the main thread
is, since when it has not moved) to the run folder; the launcher reads heartbeats to kill a rank
that stopped responding altogether (a frozen process cannot run its own monitor) and, at the end,
to name the rank that failed first and why.

Stdlib only: a rank starts its monitor before importing torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

EXIT_STUCK = 124  # a rank that made no progress for --rank-timeout seconds
EXIT_FAILED = 3  # an unexpected exception (streamlab.errors.EXIT_ENVIRONMENT)
SAMPLE_S = 0.25
HEARTBEAT_S = 1.0

# kinds of report, from most to least likely to be the cause of a failed run
ERROR = "error"  # the rank's own exception, outside any collective call
STUCK = "stuck"  # no progress outside a collective call
UNRESPONSIVE = "unresponsive"  # the launcher saw no heartbeat: the whole process froze
WAITING = "waiting"  # no progress inside a collective call (most likely waiting for a peer)
PEER = "peer"  # an exception raised inside a collective call (a peer went away, a timeout)

FAULT_ENV = "STREAMLAB_FAULT"  # tests: "RANK:KIND:PHASE", KIND exit | hang | freeze | raise


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _fmt(frame) -> str:
    name = frame.f_code.co_filename.replace("\\", "/")
    for anchor, keep in (("streamlab/", True), ("site-packages/", False)):
        cut = name.rfind(anchor)
        if cut >= 0:
            name = name[cut if keep else cut + len(anchor):]
            break
    return f"{name}:{frame.f_lineno} in {frame.f_code.co_name}"


def _where(frame) -> dict:
    """Innermost frame, and the innermost one in streamlab code (the more telling of the two)."""
    if frame is None:
        return {"at": "?", "in_streamlab": None}
    ours, f, depth = None, frame, 0
    while f is not None and ours is None and depth < 80:
        if "streamlab" in f.f_code.co_filename:
            ours = f
        f, depth = f.f_back, depth + 1
    return {"at": _fmt(frame), "in_streamlab": _fmt(ours) if ours is not None else None}


class RankMonitor:
    """One per rank process. `phase(name)` marks progress through the run; `collective(name)`
    brackets every collective call (installed with streamlab.kernels.allreduce.progress.install:
    the all-reduce implementations and the control-plane collectives call it through
    `progress.in_collective`); `fail(exc)` and `stuck` reports land in the run folder."""

    def __init__(self, rank: int, world: int, local_rank: int, run_dir: Path | None,
                 timeout: float, grace: float) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.run_dir = run_dir
        self.timeout, self.grace = timeout, grace
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.current = "start"
        self.in_collective: str | None = None
        self.raised_in: str | None = None  # the collective an exception came out of
        self.calls = 0
        self.state = "running"
        self._main = threading.main_thread().ident
        self._last_key: object = None
        self._still_since = time.time()
        self._last_beat = 0.0
        self._lock = threading.Lock()
        self._fault = self._parse_fault(os.environ.get(FAULT_ENV, ""))
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

    # -- used by the rank --------------------------------------------------------------------

    def start(self) -> "RankMonitor":
        threading.Thread(target=self._loop, name="streamlab-rank-monitor", daemon=True).start()
        return self

    def phase(self, name: str) -> None:
        self.current = name
        self._beat(force=True)
        self._inject(name)

    @contextlib.contextmanager
    def collective(self, name: str):
        outer = self.in_collective
        self.in_collective = outer or name
        self.calls += 1
        try:
            yield
        except BaseException:
            self.raised_in = self.raised_in or self.in_collective
            raise
        finally:
            self.in_collective = outer
            self.calls += 1

    def fail(self, exc: BaseException, expected: bool = False) -> int:
        """Write the report for an exception that ends this rank; the exit code to use.
        `expected`: a streamlab Failure or bad input, whose message is already the whole story."""
        from_failure = getattr(exc, "code", None)
        code = from_failure if isinstance(from_failure, int) and from_failure > 0 else EXIT_FAILED
        text = str(exc).strip() or type(exc).__name__
        if not expected:
            text = f"{type(exc).__name__}: {text}"
        where = self.in_collective or self.raised_in
        kind = PEER if where and not expected else ERROR
        text = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|cu|h|hpp):\d+\]\s*", "", text)  # C++ source prefixes
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        self.report(kind, text.splitlines()[0] if kind == PEER else text, code=code, detail=detail,
                    collective=where)
        return code

    def report(self, kind: str, message: str, code: int, detail: str = "",
               collective: str | None = None) -> None:
        self.state = "failed"
        if self.run_dir is None:
            print(f"rank {self.rank}: {message}", file=sys.stderr, flush=True)
            return
        with self._lock:
            _atomic_json(self.run_dir / f"rank{self.rank}.report.json", {
                "rank": self.rank, "world": self.world, "pid": self.pid, "host": self.host,
                "kind": kind, "phase": self.current, "collective": collective or self.in_collective,
                "message": message, "code": code, "time": time.time(), "detail": detail})
        self._beat(force=True)

    def done(self) -> None:
        self.state = "done"
        self._beat(force=True)

    def outcome(self, code: int, message: str) -> None:
        """Rank 0, after a complete run: what the launcher should return and say."""
        if self.run_dir is not None:
            _atomic_json(self.run_dir / "outcome.json", {"code": code, "message": message})

    # -- the monitor thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            try:
                self._sample()
            except Exception:  # the monitor must never take the rank down by itself
                pass

    def _sample(self) -> None:
        frame = sys._current_frames().get(self._main)
        key = (self.current, self.calls, self.in_collective, self._stack_key(frame))
        now = time.time()
        if key != self._last_key:
            self._last_key, self._still_since = key, now
        self._where = _where(frame)
        self._beat()
        still = now - self._still_since
        limit = self.timeout + (self.grace if self.in_collective else 0.0)
        if self.state == "running" and still > limit:
            where = self._where["in_streamlab"] or self._where["at"]
            if self.in_collective:
                msg = (f"waited {still:.0f} s inside {self.in_collective} in phase "
                       f"'{self.current}' (at {where}) without the other ranks completing it")
                kind = WAITING
            else:
                msg = (f"made no progress for {still:.0f} s in phase '{self.current}' "
                       f"(main thread at {self._where['at']}"
                       + (f", called from {where}" if where != self._where["at"] else "") + ")")
                kind = STUCK
            self.report(kind, msg, code=EXIT_STUCK)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_STUCK)

    @staticmethod
    def _stack_key(frame) -> tuple:
        out = []
        while frame is not None and len(out) < 6:
            out.append((id(frame), frame.f_code, frame.f_lineno, frame.f_lasti))
            frame = frame.f_back
        return tuple(out)

    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if self.run_dir is None or (not force and now - self._last_beat < HEARTBEAT_S):
            return
        self._last_beat = now
        where = getattr(self, "_where", {"at": "?", "in_streamlab": None})
        with self._lock:
            _atomic_json(self.run_dir / f"rank{self.rank}.heartbeat.json", {
                "rank": self.rank, "local_rank": self.local_rank, "world": self.world,
                "pid": self.pid, "host": self.host, "time": now, "phase": self.current,
                "collective": self.in_collective, "still_since": self._still_since,
                "where": where, "state": self.state})

    # -- fault injection (tests) -------------------------------------------------------------

    def _parse_fault(self, text: str):
        parts = text.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) != self.rank:
            return None
        return parts[1], parts[2]

    def _inject(self, phase: str) -> None:
        if self._fault is None or not phase.startswith(self._fault[1]):
            return
        kind = self._fault[0]
        if kind == "exit":
            sys.stdout.flush()
            os._exit(7)
        if kind == "hang":
            while True:
                time.sleep(3600)
        if kind == "freeze":  # the whole process stops, monitor thread included
            os.kill(os.getpid(), signal.SIGSTOP)
        if kind == "raise":
            raise RuntimeError(f"injected fault in phase {phase!r}")


# -- the launcher's side ---------------------------------------------------------------------


@dataclass
class RankEnd:
    """What the launcher knows about one rank at the end of a failed run."""

    rank: int
    exitcode: int | None = None  # from the elastic agent, for ranks it saw fail
    signal: str | None = None
    report: dict | None = None
    heartbeat: dict | None = None
    killed_by_launcher: str | None = None
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def heartbeats(run_dir: Path) -> dict[int, dict]:
    return _by_rank(run_dir, "heartbeat")


def reports(run_dir: Path) -> dict[int, dict]:
    return _by_rank(run_dir, "report")


def _by_rank(run_dir: Path, kind: str) -> dict[int, dict]:
    """rank -> the readable rank*.KIND.json files of the run folder (one being written is skipped)."""
    return {d["rank"]: d for p in run_dir.glob(f"rank*.{kind}.json") if (d := read_json(p)) is not None}


PRIORITY = {ERROR: 0, "died": 1, STUCK: 2, UNRESPONSIVE: 2, WAITING: 3, PEER: 4}


def explain(ends: dict[int, RankEnd], world: int) -> tuple[str, int]:
    """One message naming the rank that most likely failed first, and why; and the exit code.

    Own errors beat ranks that died without a report, which beat stuck ranks (the one stuck the
    longest first), which beat ranks that were only waiting for their peers.
    """
    cands = []
    for e in ends.values():
        r = e.report
        if r is not None:
            cands.append((PRIORITY.get(r["kind"], 5), r.get("time", 0.0), e, r["kind"]))
        elif e.killed_by_launcher:
            cands.append((PRIORITY[UNRESPONSIVE], 0.0, e, UNRESPONSIVE))
        elif e.exitcode not in (None, 0):
            cands.append((PRIORITY["died"], 0.0, e, "died"))
    if not cands:
        return (f"the run of {world} ranks failed, and no rank said why (the elastic agent saw "
                "no failed rank; see the output above)", EXIT_FAILED)
    # among stuck ranks, the one whose stack stopped moving first is the likely culprit
    def order(c):
        prio, t, e, kind = c
        still = (e.heartbeat or {}).get("still_since", t) if kind in (STUCK, WAITING, UNRESPONSIVE) else t
        return (prio, still)

    cands.sort(key=order)
    prio, _, root, kind = cands[0]
    where = lambda e: f"rank {e.rank} of {world}" + (
        f" ({e.heartbeat['host']}, pid {e.heartbeat['pid']})" if e.heartbeat else "")
    phase = (root.report or root.heartbeat or {}).get("phase")
    at = f" in phase '{phase}'" if phase and kind in ("died", UNRESPONSIVE) else ""
    if kind == "died":
        how = (f"died from signal {root.signal}" if root.signal else
               f"exited with code {root.exitcode}")
        msg = f"{where(root)} {how}{at} without reporting an error (crashed, killed or exited early)"
        code = EXIT_FAILED
    elif kind == UNRESPONSIVE:
        msg = f"{where(root)} stopped responding{at}: {root.killed_by_launcher}"
        code = EXIT_STUCK
    else:
        r = root.report
        msg = f"{where(root)} " + (r["message"] if kind in (STUCK, WAITING)
                                   else f"failed in phase '{r['phase']}': {r['message']}")
        code = r.get("code") or EXIT_FAILED
    others = []
    same = [c[2].rank for c in cands[1:] if c[2].report and root.report
            and c[2].report["message"] == root.report["message"]]
    if same:
        others.append(f"the same on rank{'s' if len(same) > 1 else ''} {', '.join(map(str, sorted(same)))}")
    for _, _, e, k in cands[1:]:
        if e.rank in same:
            continue
        if k == "died" and e.signal in ("SIGTERM", "SIGKILL"):
            continue  # stopped by the elastic agent after the first failure
        if len(others) == 3:
            break
        if k in (PEER, WAITING):
            others.append(f"rank {e.rank} then lost its peers"
                          + (f" in {e.report['collective']}" if e.report and e.report.get("collective") else ""))
        elif k == "died":
            others.append(f"rank {e.rank} exited with code {e.exitcode}")
        else:
            others.append(f"rank {e.rank}: {(e.report or {}).get('message', k)}")
    tail = f" ({'; '.join(others)})" if others else ""
    return f"{msg}; every rank was stopped{tail}", code


def kill_leftovers(run_dir: Path, module: str) -> list[int]:
    """SIGKILL rank processes of this run that are still alive (by pid, checked against their
    command line so a recycled pid is never touched). Returns the pids killed."""
    killed = []
    for hb in heartbeats(run_dir).values():
        pid = hb.get("pid")
        if hb.get("host") != socket.gethostname() or not isinstance(pid, int):
            continue
        if is_worker(pid, module):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def is_worker(pid: int, module: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rfind(")") + 2:].startswith("Z"):
            return False  # a zombie is already dead
    except OSError:
        return False
    return module.encode() in cmd
