"""`erase bench attacks`: cells rebuild the leaderboard (rows, denominators, relearning curves, plot)."""

import json

import pytest

from erase.bench.attacks import collect, run_attacks, seed_suite
from erase.errors import EraseError
from erase.prompts import read_suite


def _cell(method, attack, seed, asr, n, plain, curve=None):
    cell = {"method": method, "attack": attack, "seed": seed, "asr": asr, "n_attacked": n,
            "successes": round(asr * n), "pre_asr": 0.0, "plain_rate": plain, "n_prompts": n, "budget": "quick",
            "relearn": None, "settings": {}}
    if curve:
        cell["relearn"] = {"curve": [{"steps": s, "concept_rate": r} for s, r in curve], "threshold": 0.5,
                           "steps_to_threshold": next((s for s, r in curve if r >= 0.5), None)}
    return cell


def test_cells_rebuild_rows_summary_table_and_plot(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    for c in [_cell("esd_x", "p4d", 0, 0.5, 4, 0.0), _cell("esd_x", "p4d", 1, 0.25, 4, 0.25),
              _cell("esd_x", "relearn", 0, 1.0, 4, 0.0, [(0, 0.0), (5, 0.5), (10, 1.0)]),
              _cell("esd_x", "relearn", 1, 0.75, 4, 0.0, [(0, 0.0), (5, 0.25), (10, 0.75)]),
              _cell("retrain", "relearn", 0, 0.0, 4, 0.0, [(0, 0.0), (5, 0.0), (10, 0.0)])]:
        (cells / f"{c['method']}_{c['attack']}_s{c['seed']}.json").write_text(json.dumps(c))
    res = collect(tmp_path)
    assert next((r["method"], r["attack"], r["seed"]) for r in res["rows"]) == ("retrain", "relearn", 0)  # reference first
    assert all({"method", "attack", "seed", "asr"} <= set(r) for r in res["rows"]) and len(res["rows"]) == 5
    by = {(r["method"], r["attack"]): r for r in res["summary"]}
    p4d = by[("esd_x", "p4d")]
    assert (p4d["successes"], p4d["attacked"]) == (3, 8) and p4d["asr"]["mean"] == pytest.approx(0.375)
    rel = by[("esd_x", "relearn")]
    assert [p["steps"] for p in rel["relearn_curve"]] == [0, 5, 10]
    assert rel["relearn_curve"][2]["mean"] == pytest.approx(0.875) and rel["steps_to_threshold"] == [5, 10]
    assert by[("retrain", "relearn")]["steps_to_threshold"] == [None]
    assert "| esd_x | p4d | quick | 2 | 37.5 ± 17.7 | 3/8 |" in res["table"]
    assert "never (rate >= 0.5)" in res["table"]
    assert (tmp_path / "attacks.png").stat().st_size > 1000


def test_seed_suites_shift_the_image_seeds(tmp_path):
    base = read_suite("prompts/digits/digit3.csv").rows
    assert seed_suite(tmp_path, 0).name == "digit3.csv"
    shifted = read_suite(seed_suite(tmp_path, 2)).rows
    assert [r.seed for r in shifted] == [r.seed + 2000 for r in base] and [r.prompt for r in shifted] == [r.prompt for r in base]


def test_unknown_names_fail_before_any_work(tmp_path):
    with pytest.raises(EraseError, match="--attacks: unknown attack 'bogus'"):
        run_attacks(tmp_path, quick=True, attacks=("bogus",))
    with pytest.raises(EraseError, match="--methods: unknown method"):
        run_attacks(tmp_path, quick=True, methods=("nothing",))
    assert not (tmp_path / "cells").exists()


def test_the_shipped_leaderboard_rebuilds_from_its_cells(tmp_path):
    """benchmarks/attacks/table.md is what its cells give (the table in BENCHMARKS.md is that file)."""
    import shutil
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "attacks"
    shutil.copytree(shipped / "cells", tmp_path / "cells")  # collect() writes its plot next to the cells
    r = collect(tmp_path)
    assert r["table"] + "\n" == (shipped / "table.md").read_text(encoding="utf-8")
    assert {(row["method"], row["attack"]) for row in r["rows"]} >= {("retrain", "relearn"), ("esd_x", "relearn")}
    assert all(row["n_attacked"] == 4 for row in r["rows"])


def test_the_closed_form_row_is_edited_once_and_reused(tmp_path):
    """`uce` is attacked like a trained recipe: its model comes from `erase edit`, reused while its config holds."""
    from erase.bench.attacks import EDITS, edited_model
    from erase.resources import data_path

    config = data_path(f"configs/digits/{EDITS['uce']}.yaml")
    assert edited_model(config, tmp_path / "uce") is None  # edited now
    info = json.loads((tmp_path / "uce" / "run.json").read_text())
    assert info["status"] == "completed" and info["kind"] == "edit" and info["metrics"]["layers"] > 0
    assert edited_model(config, tmp_path / "uce") == info["wall_time_s"]  # reused
    import re

    changed, text = tmp_path / "uce_other.yaml", config.read_text()
    changed.write_text(re.sub(r"preserve_scale: [0-9.]+", "preserve_scale: 0.777", text))
    assert changed.read_text() != text
    (changed.parent / "prompts").symlink_to(config.parents[2] / "prompts")  # the recipe's relative prompt files
    assert edited_model(changed, tmp_path / "uce") is None  # another config: edited again
