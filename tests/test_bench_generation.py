"""`erase bench generation`: cells built from the shipped configs, the summary over seeds, and the
--quick run end to end (with the base model standing in as the reference, so the gap path runs)."""

import json
import math
import statistics

from erase.bench.generation import MEAN_GAP_KEYS, cell_overrides, gaps, loreun_verdicts, summarise, table
from erase.cli import main
from erase.config import load_config
from erase.resources import data_path
from erase.train.config import RunConfig, resolve_data_paths


def _cfg(stem, ov):
    path = data_path(f"configs/digits/{stem}.yaml")
    return resolve_data_paths(load_config(RunConfig, path, ov), path)


def test_cells_use_the_shipped_recipes_with_one_seed_and_budget():
    stem, ov = cell_overrides("esd_x", "loreun_d", "digit", 2, 40)
    cfg = _cfg(stem, ov)
    assert stem == "esd_loreun" and cfg.weighting.kind == "dynamic" and cfg.train.seed == 2 and cfg.train.steps == 40
    stem, ov = cell_overrides("salun", "loreun_s", "digit", 1, 40)
    assert stem == "salun_loreun" and _cfg(stem, ov).weighting.kind == "static"
    stem, ov = cell_overrides("esd_u", "uniform", "digit", 0, 40)
    cfg = _cfg(stem, ov)
    assert stem == "esd" and cfg.weighting.kind == "uniform" and cfg.objective["variant"] == "u"
    stem, ov = cell_overrides("robust", "uniform", "digit", 0, 40)
    assert stem == "robust" and _cfg(stem, ov).params.train == "xattn" and _cfg(stem, ov).method == "advunlearn"
    stem, ov = cell_overrides("rum", "uniform", "digit", 0, 40)
    assert stem == "rum_esd" and _cfg(stem, ov).rum.enabled and not any(o.startswith("train.steps") for o in ov)


def test_colour_cells_forget_red_and_retain_the_other_inks():
    stem, ov = cell_overrides("esd_x", "uniform", "colour", 0, None)
    cfg = _cfg(stem, ov)
    assert all("red" in p for p in cfg.data.forget.prompts) and cfg.data.retain.file is None
    assert cfg.data.retain.prompts and not any("red" in p for p in cfg.data.retain.prompts)


def test_summary_is_mean_and_std_over_seeds_and_gaps_are_absolute():
    cells = []
    for seed, rate in enumerate([0.1, 0.3, 0.2]):
        m = {"concept_rate": rate, "other_digits": 0.9, "other_inks": None, "frechet": 10.0 + seed}
        ref = {"concept_rate": 0.05, "other_digits": 1.0, "frechet": 12.0}
        cells.append({"concept": "digit", "method": "esd_x", "weighting": "uniform", "seed": seed, "metrics": m,
                      "gap": gaps(m, ref)})
    assert gaps(cells[0]["metrics"], None) is None
    g = cells[2]["gap"]
    assert set(g) == {"concept_rate", "other_digits", "frechet"} and math.isclose(g["frechet"], 0.0)
    (row,) = summarise(cells)
    assert row["seeds"] == [0, 1, 2]
    assert math.isclose(row["concept_rate"]["mean"], statistics.fmean([0.1, 0.3, 0.2]))
    assert math.isclose(row["concept_rate"]["std"], statistics.stdev([0.1, 0.3, 0.2]))
    per_cell = [statistics.fmean([c["gap"]["concept_rate"], c["gap"]["other_digits"]]) for c in cells]
    assert math.isclose(row["mean_gap"]["mean"], statistics.fmean(per_cell)) and "other_inks" not in row
    assert math.isclose(row["frechet_gap"]["mean"], statistics.fmean([2.0, 1.0, 0.0]))


def test_table_says_on_how_many_seeds_an_attack_ran():
    cells = []
    for seed in range(3):
        m = {"concept_rate": 0.0, "other_digits": 1.0, "other_inks": 1.0, "frechet": 10.0}
        if seed < 2:
            m["asr_concept_inversion"] = [0.25, 0.75][seed]
        if seed == 0:
            m["asr_unlearndiffatk"] = 0.5
        cells.append({"concept": "digit", "method": "esd_x", "weighting": "uniform", "seed": seed, "metrics": m, "gap": None})
    row = table(summarise(cells)).splitlines()[-1]
    assert "| 50.0 ± 0.0 (n=1) | 50.0 ± 35.4 (n=2) |" in row, row
    for c in cells:  # on every seed: no count
        c["metrics"]["asr_unlearndiffatk"] = 0.5
    assert "| 50.0 ± 0.0 | 50.0 ± 35.4 (n=2) |" in table(summarise(cells)).splitlines()[-1]


def test_loreun_verdicts_read_a_paired_interval():
    def cells(w, gaps, method="esd_x"):
        return [{"concept": "digit", "method": method, "weighting": w, "seed": s, "metrics": {"concept_rate": g},
                 "gap": {k: g for k in MEAN_GAP_KEYS}} for s, g in enumerate(gaps)]

    rows = [*cells("uniform", [0.30, 0.32, 0.28]), *cells("loreun_d", [0.20, 0.23, 0.17]),  # -0.1 every seed
            *cells("loreun_s", [0.25, 0.40, 0.27]),  # mixed signs: the interval holds 0
            *cells("uniform", [0.10, 0.12, 0.11], "salun"), *cells("loreun_d", [0.20, 0.21, 0.22], "salun"),
            *cells("uniform", [0.10], "neggrad"), *cells("loreun_d", [0.0], "neggrad")]
    got = {(v["method"], v["weighting"]): v for v in loreun_verdicts(rows)}
    d = got["esd_x", "loreun_d"]
    assert d["verdict"] == "helps" and d["seeds_lower"] == 3 and math.isclose(d["mean_diff"], -0.1)
    assert d["ci_low"] < -0.1 < d["ci_high"] < 0
    # paired t by hand: differences -0.10, -0.09, -0.11: sd 0.01, t_{0.975, 2} = 4.3027
    assert math.isclose(d["ci_high"] - d["ci_low"], 2 * 4.302653 * 0.01 / math.sqrt(3), rel_tol=1e-4)
    assert got["esd_x", "loreun_s"]["verdict"] == "no difference"
    assert got["salun", "loreun_d"]["verdict"] == "hurts" and got["neggrad", "loreun_d"]["verdict"] == "too few seeds"
    assert len(got) == 4


def test_generation_verdicts_recompute_from_the_shipped_cells(tmp_path):
    import shutil
    from pathlib import Path

    from erase.bench.generation import collect

    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "generation" / "cells"
    shutil.copytree(shipped, tmp_path / "cells")  # collect() writes its plot next to the cells
    r = collect(tmp_path)
    assert r["loreun"] and all({"mean_diff", "ci_low", "ci_high", "seeds_lower", "verdict"} <= set(v) for v in r["loreun"])
    assert {v["verdict"] for v in r["loreun"]} <= {"helps", "hurts", "no difference", "too few seeds"}
    assert "paired change [95% CI]" in r["table"]


def test_bench_generation_quick(tmp_path, capsys):
    assert main(["bench", "generation", "--quick", "--reference", "digit=zoo:digits", "--out", str(tmp_path)]) == 0
    out = tmp_path / "generation"
    r = json.loads((out / "results.json").read_text())
    (cell,) = r["cells"]
    assert (cell["method"], cell["weighting"], cell["seed"]) == ("esd_x", "uniform", 0) and r["steps"] == 2
    m = cell["metrics"]
    for k in ("concept_rate", "other_digits", "other_inks", "frechet", "asr_unlearndiffatk", "asr_concept_inversion"):
        assert m[k] is not None and math.isfinite(m[k]) and m[k] >= 0, k
    assert 0 <= m["concept_rate"] <= 1 and r["references"]["digit"]["source"] == "zoo:digits"
    assert set(cell["gap"]) >= {"concept_rate", "other_digits", "frechet"}
    assert all(math.isfinite(v) and v >= 0 for v in cell["gap"].values())
    (row,) = r["summary"]
    assert math.isclose(row["mean_gap"]["mean"], statistics.fmean(cell["gap"][k] for k in MEAN_GAP_KEYS if k in cell["gap"]))
    assert (out / "generation.png").stat().st_size > 0 and "esd_x" in (out / "table.md").read_text()
    # resumable: a second run into the same folder skips the finished cell and keeps its numbers
    capsys.readouterr()
    assert main(["bench", "generation", "--quick", "--reference", "digit=zoo:digits", "--out", str(tmp_path)]) == 0
    assert "done before, skipped" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["cells"][0]["metrics"] == m and again["cells"][0]["seconds"] == cell["seconds"]


def test_bench_generation_unknown_method_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "generation", "--quick", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "--methods" in capsys.readouterr().err
