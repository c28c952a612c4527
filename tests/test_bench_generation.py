"""`erase bench generation`: cells built from the shipped configs, the summary over seeds, and the
--quick run end to end (with the base model standing in as the reference, so the gap path runs)."""

import json
import math
import statistics

from erase.bench.generation import (
    MEAN_GAP_KEYS,
    cell_overrides,
    gaps,
    loreun_verdicts,
    resolved_trajectory,
    retention_drops,
    summarise,
    table,
    trajectory_verdicts,
    verdict_table,
)
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


def test_cells_know_their_trajectory():
    """ESD's default is online; AdvUnlearn's (the frozen encoder's trajectories, as the official code) and
    robust.yaml's are cached; --trajectory overrides either."""
    for method, want in (("esd_x", "online"), ("advunlearn", "cached"), ("robust", "cached")):
        stem, ov = cell_overrides(method, "uniform", "digit", 0, 40)
        assert resolved_trajectory(data_path(f"configs/digits/{stem}.yaml"), ov) == want, method
    stem, ov = cell_overrides("robust", "uniform", "digit", 0, 40)
    assert resolved_trajectory(data_path("configs/digits/robust.yaml"), [*ov, "objective.trajectory=online"]) == "online"
    stem, ov = cell_overrides("salun", "uniform", "digit", 0, 40)
    assert resolved_trajectory(data_path("configs/digits/salun.yaml"), ov) is None


def test_retention_is_judged_by_the_worst_other_digit_against_the_base():
    base = {"per_digit": {"two": 1.0, "three": 1.0, "five": 0.9}, "per_colour": {"black": 1.0, "red": 0.8}}
    m = {"per_digit": {"two": 0.95, "three": 0.0, "five": 0.6}, "per_colour": {"black": 0.9, "red": 0.0}}
    r = retention_drops(m, base, "digit")
    # the erased digit is not "another digit"; the mean of the others (0.775) would hide five's drop
    assert r["worst_other_digit"] == "five" and math.isclose(r["max_other_drop"], 0.3)
    assert r["worst_other_ink"] == "red" and math.isclose(r["max_other_ink_drop"], 0.8)
    r = retention_drops(m, base, "colour")  # the colour concept: every digit counts, red does not
    assert r["worst_other_digit"] == "three" and r["worst_other_ink"] == "black"
    assert retention_drops(m, None, "digit") == {}


def test_asr_gaps_compare_only_asrs_measured_alike():
    held = {"limit": 6, "budget": "standard", "suite": "prompts/digits/digit3_heldout.csv"}
    m = {"concept_rate": 0.0, "asr_concept_inversion": 0.0, "attack_settings": {"concept_inversion": held}}
    ref = {"concept_rate": 0.1, "asr_concept_inversion": 0.5,
           "attack_settings": {"concept_inversion": {"limit": 12, "budget": "standard"}}}
    assert set(gaps(m, ref)) == {"concept_rate"}
    ref["attack_settings"]["concept_inversion"] = dict(held)
    assert math.isclose(gaps(m, ref)["asr_concept_inversion"], 0.5)


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


def test_online_and_cached_cells_are_never_mixed():
    cells = [{"concept": "digit", "method": "esd_x", "weighting": "uniform", "seed": s, "trajectory": tr, "gap": None,
              "metrics": {"concept_rate": rate, "other_digits": 1.0, "other_inks": 1.0, "frechet": 1.0}}
             for s in range(2) for tr, rate in (("cached", 0.0), ("online", 0.5))]
    rows = {r["trajectory"]: r for r in summarise(cells)}
    assert set(rows) == {"cached", "online"} and rows["online"]["concept_rate"]["mean"] == 0.5
    text = table(list(rows.values()))
    assert "| esd_x (cached) |" in text and "| esd_x (online) |" in text


def test_trajectory_verdicts_pair_online_with_cached_by_seed():
    def cell(tr, s, gap, asr, weighting="uniform"):
        return {"concept": "digit", "method": "esd_x", "weighting": weighting, "seed": s, "trajectory": tr,
                "metrics": {"concept_rate": gap, "asr_concept_inversion": asr}, "gap": {k: gap for k in MEAN_GAP_KEYS}}

    cells = [*(cell("cached", s, g, a) for s, g, a in ((0, 0.10, 0.5), (1, 0.20, 0.25), (2, 0.30, 0.5))),
             *(cell("online", s, g, a) for s, g, a in ((0, 0.05, 0.5), (1, 0.16, 0.5), (2, 0.24, 0.75))),
             cell("online", 0, 0.0, 0.0, "loreun_d")]  # no cached twin: no verdict
    got = {v["key"]: v for v in trajectory_verdicts(cells, ("mean_gap", "asr_concept_inversion"))}
    assert set(got) == {"mean_gap", "asr_concept_inversion"}
    g = got["mean_gap"]  # online - cached: -0.05, -0.04, -0.06, every seed lower
    assert g["verdict"] == "helps" and g["seeds_lower"] == 3 and math.isclose(g["mean_diff"], -0.05)
    assert math.isclose(g["cached"], 0.2) and math.isclose(g["online"], 0.15)
    a = got["asr_concept_inversion"]  # 0, +0.25, +0.25: the interval holds 0
    assert a["verdict"] == "no difference" and a["seeds_lower"] == 0 and a["n"] == 3
    assert "| cached | online |" in verdict_table(list(got.values()), "cached", "online")


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
    # ESD's default trajectory, in the cell's name and record and in the run's resolved config.yaml
    assert cell["trajectory"] == "online" and (out / "cells" / "digit_esd_x_uniform_s0_online.json").is_file()
    assert "trajectory: online" in (out / "work" / "digit_esd_x_uniform_s0_online" / "config.yaml").read_text()
    assert "max_other_drop" in cell["retention"] and (out / "cells" / "base_digit.json").is_file()
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
    # a cell whose run completed but whose result was lost is evaluated again, not retrained
    (out / "cells" / "digit_esd_x_uniform_s0_online.json").unlink()
    assert main(["bench", "generation", "--quick", "--attacks", "none", "--reference", "digit=zoo:digits",
                 "--out", str(tmp_path)]) == 0
    assert "evaluated, not retrained" in capsys.readouterr().out


def test_bench_generation_unknown_method_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "generation", "--quick", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "--methods" in capsys.readouterr().err
