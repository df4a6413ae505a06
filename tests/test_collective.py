"""Multi-process runs on the CPU (gloo): the launcher path gives one result with every rank's
figures; a rank that exits or hangs stops every rank with one message naming it; the all-reduce
sweep; and the pieces (size parsing, busbw, choice of implementation, capture hook, blame)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from streamlab.collective import watch
from streamlab.collective.sweep import parse_sizes
from streamlab.collective.worker import MODULE
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.kernels.allreduce.impls import bandwidths, busbw_factor, capture_hook, choose
from streamlab.results import AllReduceSweep, RunResult, load

ROOT = Path(__file__).parent.parent

TINY = """\
name: tiny_a_v4
model: tiny
shape: {batch: 2, context: 256, tp: 1, page_size: 64, kv_cache: fp8}
variant: {fused_rope_cat_cache: true, shared_expert_fused: true, preshuffle_index_cache: true}
schedule:
  - run: [input_norm, qkv_a_proj]
  - fork: alt
  - run: [q_a_norm]
  - on: alt
    run: [kv_a_norm]
  - join: alt
  - fork: alt
  - run: [q_b_proj]
  - on: alt
    run: [indexer]
  - run: [bmm_w_kc, rope_and_cache]
  - join: alt
  - run: [mla_decode, bmm_w_vc, o_proj, allreduce_attn, post_norm, moe, allreduce_moe]
collective: {impl: auto}
measure: {layers: 2, warmup: 2, iters: 5, repeats: 2, profile_replays: 2}
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    p = tmp_path / "tiny_a_v4.yaml"
    p.write_text(TINY)
    return p


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop(watch.FAULT_ENV, None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU machine
    env.update(extra)
    return env


def _python(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """A command in a process of its own; a run that does not end within `timeout` fails the
    test (TimeoutExpired): every rank must be stopped, not left to hang."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _workers_alive(marker: str) -> list[int]:
    """Rank processes of a run (their command line holds `marker`, the run's --out)."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (d / "cmdline").read_bytes()
            stat = (d / "stat").read_text()
            if (MODULE.encode() in cmd and marker.encode() in cmd
                    and not stat[stat.rfind(")") + 2:].startswith("Z")):
                alive.append(int(d.name))
    return alive


def test_world2_run_through_the_launcher_gives_one_result_with_both_ranks(scenario, tmp_path):
    out = tmp_path / "out"
    p = _python(["-m", "streamlab", "run", str(scenario), "--world", "2", "--device", "cpu",
                    "--out", str(out), "--rank-timeout", "30"])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    results = sorted(x.name for x in out.glob("*.json"))
    stem = "tiny_a_v4-tiny-b2-ctx256-tp1-page64-kvfp8-sim-mi355x-w2-gloo"
    assert results == [f"{stem}.json"]
    r = load(out / results[0], RunResult)
    assert r.ranks.world == 2 and r.ranks.complete is True and r.equal_to_serial is True
    assert [f.rank for f in r.ranks.figures] == [0, 1]
    assert r.ranks.allreduce["backend"] == "gloo" and r.anatomy.allreduce == "gloo"
    # the real all-reduce was bound to the layer's all-reduce nodes on every rank
    assert r.backends["allreduce_attn"] == r.backends["allreduce_moe"] == "gloo"
    for f in r.ranks.figures:
        assert set(f.allreduce_nodes) == {"allreduce_attn", "allreduce_moe"}
        assert f.latency.median > 0 and f.allreduce_per_call_us.n > 0
        for node in f.allreduce_nodes.values():
            assert node.bytes > 0
            assert node.busbw_gbs == pytest.approx(node.algbw_gbs)  # 2 (n - 1) / n = 1 at n = 2
            assert node.algbw_gbs == pytest.approx(node.bytes / (node.in_graph_us.median * 1e3))
    assert r.trace == str(out / f"{stem}.trace.json.gz") and Path(r.trace).exists()
    assert "result (2 ranks, all-reduce gloo)" in p.stdout
    assert not _workers_alive(str(out))


def test_a_rank_that_exits_early_stops_every_rank_with_one_message(scenario, tmp_path):
    out = tmp_path / "out"
    p = _python(["-m", "streamlab", "run", str(scenario), "--world", "2",
                       "--device", "cpu", "--out", str(out), "--rank-timeout", "20"],
                      STREAMLAB_FAULT="1:exit:run")
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    assert "rank 1 of 2" in errors[0] and "exited with code 7" in errors[0]
    assert "phase 'run tiny_a_v4" in errors[0] and "every rank was stopped" in errors[0]
    assert not list(out.glob("*.json"))  # nothing presented as a result
    assert not _workers_alive(str(out))


def test_a_rank_that_hangs_is_named_and_every_rank_ends(scenario, tmp_path):
    out = tmp_path / "out"
    p = _python(["-m", "streamlab", "run", str(scenario), "--world", "2",
                       "--device", "cpu", "--out", str(out), "--rank-timeout", "5"],
                      STREAMLAB_FAULT="1:hang:run")
    assert p.returncode == watch.EXIT_STUCK, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 of 2" in errors[0] and "made no progress" in errors[0]
    assert not list(out.glob("*.json"))
    assert not _workers_alive(str(out))


def test_sweep_on_two_cpu_ranks(tmp_path):
    out = tmp_path / "out"
    p = _python(["-m", "streamlab", "allreduce", "--world", "2", "--impl", "nccl", "--sizes", "1K,4K",
                    "--iters", "3", "--warmup", "1", "--calls", "2", "--device", "cpu", "--rank-timeout", "30",
                    "--out", str(out)])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    sweep = load(out / "allreduce-w2-nccl-cpu.json", AllReduceSweep)
    assert sweep.world == 2 and sweep.complete and [r.bytes for r in sweep.rows] == [1024, 4096]
    for r in sweep.rows:
        assert r.correct and r.backend == "gloo" and len(r.per_rank_us) == 2
        assert r.time_us == max(r.per_rank_us)
        assert r.algbw_gbs == pytest.approx(r.bytes / (r.time_us * 1e3))
    summary = subprocess.run([sys.executable, "-m", "streamlab", "allreduce-summary", str(out)], cwd=ROOT,
                             env=_env(COLUMNS="200"), capture_output=True, text=True, timeout=60,
                             check=False)
    assert summary.returncode == 0 and "all-reduce alone in a graph" in summary.stdout
    assert [line.split()[1] for line in summary.stdout.splitlines() if line.startswith("│")] == ["1024", "4096"]


def test_bad_sweep_options_fail_before_any_rank_starts(tmp_path):
    p = _python(["-m", "streamlab", "allreduce", "--world", "2", "--impl", "mpi", "--device", "cpu",
                 "--out", str(tmp_path)])
    assert p.returncode == EXIT_BAD_INPUT and "--impl: unknown all-reduce 'mpi'" in p.stderr
    assert not (tmp_path / "allreduce-w2-mpi-cpu.json").exists()


# -- pieces ------------------------------------------------------------------------------------


def test_sizes_double_across_a_range_and_take_single_sizes():
    got = parse_sizes("8K..64M,48K")
    assert got[0] == 8 << 10 and got[-1] == 64 << 20 and (48 << 10) in got
    assert len(got) == 14 + 1
    assert parse_sizes("1M") == [1 << 20]
    for bad in ("", "8X", "64M..8K", "10"):
        with pytest.raises(Failure):
            parse_sizes(bad)


def test_nccl_tests_bandwidth_columns():
    alg, bus = bandwidths(48 << 10, 10.0, 8)
    assert alg == pytest.approx(49152 / 1e4)  # GB/s: bytes / us / 1e3
    assert bus == pytest.approx(alg * 2 * 7 / 8)
    assert busbw_factor(2) == 1.0 and bandwidths(1024, None, 2) == (None, None)


def test_choose_on_one_cpu_process_and_clear_refusals():
    cpu = torch.device("cpu")
    assert choose("auto", 1, cpu) is None  # the kernels' own all-reduce of one rank
    with pytest.raises(Failure, match="GPU kernel"):
        choose("emulated", 1, cpu)
    with pytest.raises(Failure, match="torch.distributed"):
        choose("nccl", 2, cpu)
    with pytest.raises(Failure, match="CUDA GPU|ROCm"):
        choose("symm_mem", 1, cpu)
    if not torch.version.hip:
        with pytest.raises(Failure, match="ROCm"):
            choose("aiter", 1, cpu)
    with pytest.raises(Failure, match="unknown all-reduce"):
        choose("mpi", 2, cpu)


def test_capture_hook_enters_each_collective_once():
    entered = []

    class AR:
        backend = "fake"

        @contextlib.contextmanager
        def capture(self):
            entered.append("in")
            yield
            entered.append("out")

    ar = AR()
    node = lambda name, coll: SimpleNamespace(name=name, is_collective=coll)
    bound = {"a": SimpleNamespace(node=node("a", True), fn=ar),
             "b": SimpleNamespace(node=node("b", True), fn=ar),
             "c": SimpleNamespace(node=node("c", False), fn=lambda **kw: None)}
    with capture_hook(bound)():
        assert entered == ["in"]
    assert entered == ["in", "out"]
    with capture_hook({"c": bound["c"]})():  # no collective: nothing to hold
        pass


def _report(rank, kind, t, message="m"):
    return {"rank": rank, "kind": kind, "time": t, "phase": "run x", "message": message,
            "collective": "gloo all_reduce" if kind in (watch.PEER, watch.WAITING) else None, "code": 3}


def test_blame_prefers_own_errors_then_deaths_then_the_longest_stuck():
    E = watch.RankEnd
    # rank 0 lost its peer first in time, but rank 1 died: rank 1 is named
    msg, _ = watch.explain({0: E(0, exitcode=1, report=_report(0, watch.PEER, 1.0)),
                            1: E(1, exitcode=7)}, 2)
    assert msg.startswith("rank 1 of 2") and "exited with code 7" in msg and "rank 0 then lost" in msg
    # both stuck: the one whose stack stopped first
    hb = lambda t: {"still_since": t, "host": "h", "pid": 1, "phase": "run x"}
    msg, code = watch.explain({0: E(0, report=_report(0, watch.STUCK, 9.0), heartbeat=hb(5.0)),
                               1: E(1, report=_report(1, watch.STUCK, 9.1), heartbeat=hb(2.0))}, 2)
    assert msg.startswith("rank 1 of 2") and code == 3
    # a rank waiting inside a collective is a victim of a rank stuck elsewhere
    msg, _ = watch.explain({0: E(0, report=_report(0, watch.WAITING, 1.0), heartbeat=hb(0.0)),
                            2: E(2, report=_report(2, watch.STUCK, 5.0), heartbeat=hb(4.0))}, 4)
    assert msg.startswith("rank 2 of 4")
    # an own error beats everything
    msg, _ = watch.explain({0: E(0, exitcode=-9), 3: E(3, report=_report(3, watch.ERROR, 9.0, "boom"))}, 4)
    assert msg.startswith("rank 3 of 4") and "boom" in msg
