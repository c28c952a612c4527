"""The prompt-file dialects the field publishes (I2P, its ESD/SalUn copy, SalUn's BOM, AdvUnlearn's
case_num, ESD's label_str, concept ablation's TXT, JSONL), each as a small fixture reproducing what
broke: counts must equal pandas' on the same file and filter."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from erase.audit.suites import SuiteFilter, read_suite, read_suites

FIX = Path(__file__).resolve().parent / "fixtures" / "suites"


def _pandas_usable(df: pd.DataFrame, prompt: str, seed: str | None, guidance: str | None) -> pd.Series:
    """Rows a generator can use, decided by pandas alone: a non-blank prompt, an integer seed in
    [0, 2^63), a finite guidance >= 0 (missing seed/guidance fall back to defaults)."""
    ok = df[prompt].fillna("").astype(str).str.strip() != ""
    if seed:
        s = pd.to_numeric(df[seed], errors="coerce")
        ok &= df[seed].isna() | (s.notna() & s.apply(lambda x: math.isfinite(x) and x == int(x) and 0 <= x < 2**63))
    if guidance:
        g = pd.to_numeric(df[guidance], errors="coerce")
        ok &= df[guidance].isna() | (g.notna() & g.apply(lambda x: math.isfinite(x) and x >= 0))
    return ok


def _has_category(df: pd.DataFrame, cat: str) -> pd.Series:
    return df["categories"].fillna("").astype(str).str.split(",").apply(lambda cs: cat in [c.strip() for c in cs])


def test_i2p_guidance_above_100_loads_as_written():
    s = read_suite(FIX / "i2p_guidance.csv")
    df = pd.read_csv(FIX / "i2p_guidance.csv")
    assert len(s.rows) == int(_pandas_usable(df, "prompt", "sd_seed", "sd_guidance_scale").sum())
    assert [r.guidance for r in s.rows] == [float(g) for g in df["sd_guidance_scale"] if g >= 0]
    assert s.rows[0].seed == 4261553411
    assert s.skipped == [{"row": 5, "line": 6, "column": "sd_guidance_scale", "reason": "guidance -1 is not a finite number >= 0"}]
    assert s.columns["guidance"] == "sd_guidance_scale" and s.columns["seed"] == "sd_seed"
    assert "lexica_url" in s.ignored_columns and "id" not in s.columns


@pytest.mark.parametrize("flt, pandas_filter", [
    (SuiteFilter(categories=("sexual",)), lambda df: _has_category(df, "sexual")),
    (SuiteFilter(min_nudity=50), lambda df: df["nudity_percentage"] >= 50),
    (SuiteFilter(categories=("sexual",), min_nudity=50), lambda df: _has_category(df, "sexual") & (df["nudity_percentage"] >= 50)),
])
@pytest.mark.parametrize("name, seed, guidance", [("i2p_guidance.csv", "sd_seed", "sd_guidance_scale"),
                                                   ("unsafe_copy.csv", "evaluation_seed", "evaluation_guidance")])
def test_filters_apply_before_validation_and_counts_match_pandas(name, seed, guidance, flt, pandas_filter):
    df = pd.read_csv(FIX / name)
    kept = pandas_filter(df)
    usable = _pandas_usable(df, "prompt", seed, guidance)
    # the size column of unsafe_copy's last row is 500 (not a multiple of 8): pandas' rule for it
    usable &= (df["sd_image_width"] % 8 == 0) & (df["sd_image_height"] % 8 == 0)
    s = read_suite(FIX / name, flt)
    assert s.rows_read == len(df)
    assert s.filtered_out == int((~kept).sum())
    assert len(s.rows) == int((kept & usable).sum())
    assert len(s.skipped) == int((kept & ~usable).sum())
    assert [r.index for r in s.rows] == list(range(len(s.rows)))


def test_unsafe_copy_empty_prompts_are_skipped_with_their_rows():
    s = read_suite(FIX / "unsafe_copy.csv")
    assert [(k["row"], k["reason"]) for k in s.skipped] == [(2, "empty prompt"), (4, "empty prompt"),
                                                          (5, "image width 500 is not a positive multiple of 8")]
    assert [r.id for r in s.rows] == ["0", "2"] and s.rows[1].guidance == 8.0
    assert s.columns["id"] == "case_number" and "" in s.ignored_columns
    assert "2 prompts loaded, 3 rows skipped; first: row 2 column 'prompt': empty prompt" in s.summary()


def test_byte_order_mark_keeps_the_first_column():
    s = read_suite(FIX / "bom_case_number.csv")
    df = pd.read_csv(FIX / "bom_case_number.csv", encoding="utf-8-sig")
    assert [r.id for r in s.rows] == [str(x) for x in df["case_number"]]
    assert [r.label for r in s.rows] == list(df["class"]) and s.columns["label"] == "class"
    assert s.ignored_columns == ["classidx"]


def test_case_num_and_label_str_dialects():
    a = read_suite(FIX / "case_num.csv", SuiteFilter(base_seed=100))
    assert [r.id for r in a.rows] == ["7", "8"] and [r.seed for r in a.rows] == [100, 101]
    assert a.columns == {"prompt": "prompt", "id": "case_num"} and a.ignored_columns == ["source"]
    assert len(a.skipped) == 1
    b = read_suite(FIX / "label_str.csv")
    assert [r.label for r in b.rows] == ["tench", "goldfinch"] and b.columns["label"] == "label_str"
    assert b.skipped[0]["reason"] == "seed '31.5' is not an integer" and b.skipped[0]["column"] == "evaluation_seed"
    df = pd.read_csv(FIX / "label_str.csv")
    assert len(b.rows) == int(_pandas_usable(df, "prompt", "evaluation_seed", None).sum())


def test_txt_prompt_lists():
    s = read_suite(FIX / "eval_prompts.txt", SuiteFilter(base_seed=5))
    assert [r.prompt for r in s.rows] == ["what a cute cat", "my cat is so cute", "a cat on a sofa"]
    assert [r.seed for r in s.rows] == [5, 6, 7] and not s.skipped


def test_seed_inf_is_skipped_not_a_crash():
    c = read_suite(FIX / "seed_inf.csv")
    assert [r.prompt for r in c.rows] == ["a green pear"]
    assert [k["reason"] for k in c.skipped] == ["seed 'inf' is not an integer", "seed 'nan' is not an integer",
                                                "seed 1000000000000000019884624838656 outside [0, 2^63)"]
    j = read_suite(FIX / "seed_inf.jsonl")
    assert [r.prompt for r in j.rows] == ["a green pear", "a bare string prompt", "a kite over a field"]
    assert [k["row"] for k in j.skipped] == [1, 4, 5, 6, 7]
    assert j.skipped[0]["reason"] == "seed 'inf' is not an integer"
    assert j.skipped[4]["reason"] == "guidance inf is not a finite number >= 0"
    assert j.rows[2].id == "k1" and j.rows[2].label == "kite"
    assert j.columns["prompt"] == "prompt | caption" and j.columns["id"] == "case_num"


def test_indices_run_on_across_suites_and_limit_counts_usable_rows():
    suites = read_suites([FIX / "unsafe_copy.csv", FIX / "bom_case_number.csv"], SuiteFilter(limit=2))
    assert [r.index for s in suites for r in s.rows] == [0, 1, 2, 3]
    assert suites[0].rows_read == 3 and len(suites[0].skipped) == 1


def test_audit_reports_columns_and_skipped_rows(tiny_pipeline_dir, tmp_path, capsys):
    """results.json lists which column fed which field and every skipped row; the CLI says it in one line."""
    from erase.cli import main

    model = tiny_pipeline_dir
    dry = ["audit", "--model", str(model), "--suite", str(FIX / "unsafe_copy.csv"), "--suite", str(FIX / "case_num.csv"),
           "--detector", "digits", "--dry-run"]
    assert main(dry) == 0
    out = capsys.readouterr().out
    assert "unsafe_copy.csv columns: prompt<-prompt" in out and "id<-case_num" in out and "(unnamed)" in out
    assert "suites: 4 prompts loaded from 2 files, 4 unusable rows skipped (first: unsafe_copy.csv row 2 column 'prompt': empty prompt)" in out
    # rows without a size: the tiny model's own 32 px
    args = ["audit", "--model", str(model), "--suite", str(FIX / "label_str.csv"), "--suite", str(FIX / "case_num.csv"),
            "--detector", "digits", "--steps", "2", "--out", str(tmp_path / "audit")]
    assert main(args) == 0
    assert "2 unusable rows skipped (first: label_str.csv row 3 column 'evaluation_seed'" in capsys.readouterr().out
    res = json.loads((tmp_path / "audit" / "results.json").read_text())
    first, second = res["suite_rows"]
    assert (first["rows_read"], first["loaded"], first["skipped"]) == (3, 2, 1)
    assert first["columns"]["seed"] == "evaluation_seed" and first["columns"]["label"] == "label_str"
    assert second["skipped_rows"] == [{"row": 3, "line": 4, "column": "prompt", "reason": "empty prompt"}]
    assert res["metrics"]["n_images"] == 4
