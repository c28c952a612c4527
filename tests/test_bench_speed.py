"""`erase bench speed`: the ratio arithmetic, the CPU memory measurement, and the --quick run end to end
(structure and finite positive ratios only: timings are never asserted)."""

import ast
import inspect
import json
import math

import pytest
import torch

from erase.bench import speed
from erase.bench.speed import all_ratios, interleave, peak_bytes, ratio_stats, timed
from erase.cli import main


def test_ratio_stats_is_the_median_of_per_pair_ratios_with_its_spread():
    pairs = [(3.0, 1.0), (1.0, 1.0), (4.0, 2.0), (9.0, 3.0), (0.5, 1.0)]
    r = ratio_stats(pairs)
    ratios = sorted(a / b for a, b in pairs)
    assert r["ratio"] == ratios[2] and r["min"] == ratios[0] and r["max"] == ratios[-1] and r["n"] == 5
    assert r["a_s"] == sorted(a for a, _ in pairs)[2] and r["b_s"] == sorted(b for _, b in pairs)[2]


def test_interleave_alternates_sides_after_warmup():
    order = []
    pairs = interleave(lambda: order.append("a"), lambda: order.append("b"), repeats=3, warmup=1)
    assert len(pairs) == 3 and all(a >= 0 and b >= 0 for a, b in pairs)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]


def test_timed_is_the_benchs_one_clock_and_waits_for_cuda():
    """Every clock read of erase/bench/speed.py is in `timed`, which synchronises a CUDA device before and
    after: asking it for CUDA here runs torch.cuda.synchronize (an error on a machine without CUDA)."""
    tree = ast.parse(inspect.getsource(speed))
    clocks = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
              for sub in ast.walk(node) if isinstance(sub, ast.Attribute) and sub.attr in ("perf_counter", "monotonic")}
    assert clocks == {"timed"}, clocks
    calls = []
    assert timed(lambda: calls.append(1), "cpu") >= 0 and calls == [1]
    if torch.cuda.is_available():
        assert timed(lambda: torch.ones(8, device="cuda").sum(), "cuda") >= 0
    else:
        with pytest.raises((RuntimeError, AssertionError)):
            timed(lambda: calls.append(2), "cuda")
        assert calls == [1]  # the synchronisation comes first: nothing ran


def test_device_reaches_the_trainers_accelerator(tmp_path):
    """`--device cpu` builds the trainer's Accelerator with cpu=True (CPU even where a GPU is); no device
    leaves Accelerate its choice."""
    from erase.config import load_config
    from erase.resources import data_path
    from erase.train.config import RunConfig
    from erase.train.trainer import Trainer

    cfg = load_config(RunConfig, data_path("configs/digits/esd.yaml"), ["model=builder:tiny", "train.report_to=none"])
    # Accelerate keeps a process's first device choice; each run here asks otherwise than the one before
    for i, device in enumerate((None, "cpu", None, "cpu")):
        acc = Trainer(cfg, tmp_path / str(i), device=device)._accelerator()
        assert acc.state._cpu is (device == "cpu"), (i, device)
        assert acc.device.type == ("cuda" if torch.cuda.is_available() and device is None else "cpu")


def test_cpu_peak_memory_counts_what_the_step_holds_at_once():
    n = 1 << 20  # float32: 4 MiB per tensor
    kept = []

    def one():
        kept.append(torch.ones(n))

    def two_at_once():
        a, b = torch.ones(n), torch.ones(n)
        kept.append(a + b)

    p1, kind = peak_bytes(one, torch.device("cpu"))
    p3, _ = peak_bytes(two_at_once, torch.device("cpu"))
    assert kind == "torch_profiler_cpu_allocations"
    assert p1 >= 4 * n and p3 >= 3 * 4 * n > p1


def test_bench_speed_quick_writes_every_ratio(tmp_path, capfd):
    assert main(["bench", "speed", "--quick", "--out", str(tmp_path)]) == 0
    printed = "".join(capfd.readouterr())
    # the profiler's C++ start/stop lines are dropped; the trainer's precision line shows once
    assert "USDT" not in printed and printed.count("mixed precision:") == 1, printed[-2000:]
    out = tmp_path / "speed"
    r = json.loads((out / "results.json").read_text())
    assert set(r["objectives"]) == {"esd"} and r["quick"] and r["device"] == r["device_requested"] == "cpu"
    # what ran: the trainer's device and the audit-throughput pipeline's, as placed
    assert r["objectives"]["esd"]["device"] == "cpu" and r["audit_throughput"]["device"] == "cpu"
    esd = r["objectives"]["esd"]
    assert esd["unet_calls"]["with_grad"] >= 1 and esd["trainable"] > 0
    assert {"floor", "esd_official", "esd_official_cached", "loreun_d", "loreun_s", "memory"} <= set(esd)
    # the official procedure against ours on the same algorithm (online); the cached option on its own line
    assert esd["esd_official"]["ours_trajectory"] == "online" and esd["esd_official_cached"]["ours_trajectory"] == "cached"
    assert "ours cached" in (tmp_path / "speed" / "table.md").read_text()
    assert esd["memory"]["step_bytes"] > 0 and esd["memory"]["plain_finetune_bytes"] > 0
    assert esd["memory"]["step_samples"] >= esd["batch"] and esd["memory"]["plain_same_samples_bytes"] > 0
    assert esd["esd_official"]["ddim_steps"] == esd["esd_official"]["ours_ddim_steps"] == 4  # --quick: the recipe's
    assert esd["esd_official"]["pairs"] == 2 and "esd_official_with_retain" not in esd
    assert esd["loreun_s"]["one_time_s"] > 0
    ratios = all_ratios(r)
    assert len(ratios) == 7 and all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios
    assert [(s["series"], s["forget_prompts"], s["forget_samples"]) for s in r["scaling"]] == [
        ("prompts", 1, 1), ("prompts", 2, 2), ("samples", 1, 2)] and all(s["step_s"] > 0 for s in r["scaling"])
    assert (out / "scaling.png").stat().st_size > 0 and "step / floor" in (out / "table.md").read_text()
    assert not (out / "work").exists()


def test_bench_speed_fp16_on_cpu_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "speed", "--quick", "--dtype", "fp16", "--out", str(tmp_path)]) == 2
    assert "--dtype" in capsys.readouterr().err
