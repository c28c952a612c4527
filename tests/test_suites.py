"""Suites: both I2P column spellings, TXT/JSONL, filters, templates, one-line errors."""

from pathlib import Path

import pytest

from erase.audit.suites import SuiteFilter, load_suite, load_suites, read_suite, suite_digest
from erase.errors import EraseError
from erase.resources import data_path

EX = data_path("prompts/examples")
DIGITS = data_path("prompts/digits")
FIX = Path(__file__).resolve().parent / "fixtures" / "suites"


def test_both_i2p_spellings_give_the_same_rows():
    a, b = load_suite(EX / "i2p_format.csv"), load_suite(EX / "esd_format.csv")
    assert [(r.prompt, r.seed, r.guidance, r.categories) for r in a] == [(r.prompt, r.seed, r.guidance, r.categories) for r in b]
    assert a[1].seed == 42 and a[1].guidance == 12.0 and a[1].width == 512 and a[1].height == 512
    assert b[1].id == "1" and b[1].width is None
    assert a[3].categories == ("violence", "harassment")


def test_filters_and_templates():
    sexual = load_suite(EX / "esd_format.csv", SuiteFilter(categories=("sexual",)))
    assert [r.prompt for r in sexual] == ["portrait of a sailor, dramatic light"] and sexual[0].index == 0
    assert len(load_suite(EX / "i2p_format.csv", SuiteFilter(min_nudity=5))) == 2
    assert len(load_suite(EX / "i2p_format.csv", SuiteFilter(limit=3))) == 3
    t = load_suite(EX / "simple.txt", SuiteFilter(template="an image of {prompt}", base_seed=10))
    assert [r.prompt for r in t] == ["an image of a photo of a red bicycle", "an image of a watercolour of a mountain lake"]
    assert [r.seed for r in t] == [10, 11] and t[0].guidance == 7.5
    j = load_suite(EX / "simple.jsonl")
    assert j[1].guidance == 5.0 and j[1].label == "lake" and j[1].width == 512
    both = load_suites([DIGITS / "digit3.csv", DIGITS / "other_digits.csv"])
    assert [r.index for r in both] == list(range(len(both)))
    assert both[0].label == "three" and both[-1].label == "nine"
    assert suite_digest(both) != suite_digest(both[:-1])


@pytest.mark.parametrize("text, expect", [
    ("text2,seed\na cat,1\n", r"has no prompt column"),
    ('prompt,seed\n"a cat,1\n', r"malformed CSV|no prompts left"),
    ("prompt,seed\n,1\n  ,2\n", r"no prompts left .*2 rows skipped, first: row 1: empty prompt"),
])
def test_broken_csv_fails_with_one_clear_line(tmp_path, text, expect):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(EraseError, match=expect) as err:
        load_suite(p)
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg


@pytest.mark.parametrize("text, column, reason", [
    ("prompt,sd_seed\na cat,12x\n", "sd_seed", "seed '12x' is not an integer"),
    ("prompt,evaluation_guidance\na cat,high\n", "evaluation_guidance", "guidance 'high' is not a number"),
    ("prompt,seed\n,2\n", "prompt", "empty prompt"),
    ("prompt,seed\na cat,1,5\n", None, "3 fields but the header has 2 columns"),
    ("prompt,seed,sd_image_width\na cat,1,500\n", "sd_image_width", "image width 500 is not a positive multiple of 8"),
    ("prompt,seed\na cat,-3\n", "seed", "seed -3 outside [0, 2^63)"),
])
def test_unusable_rows_are_skipped_and_counted(tmp_path, text, column, reason):
    p = tmp_path / "bad.csv"
    p.write_text(text + "a dog,4\n")
    s = read_suite(p)
    assert [r.prompt for r in s.rows] == ["a dog"]
    assert s.skipped == [{"row": 1, "line": 2, "column": column, "reason": reason}]
    assert "1 row skipped" in s.summary() and reason in s.summary()


def test_other_formats_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    s = read_suite(tmp_path / "a.jsonl")
    assert len(s.rows) == 1 and s.skipped[0]["row"] == 2 and s.skipped[0]["reason"].startswith("not valid JSON")
    (tmp_path / "a.tsv").write_text("x")
    with pytest.raises(EraseError, match="unknown suite format"):
        load_suite(tmp_path / "a.tsv")
    with pytest.raises(EraseError, match="no prompts left"):
        load_suite(EX / "esd_format.csv", SuiteFilter(categories=("nonexistent",)))
    (tmp_path / "b.csv").write_bytes(b"prompt\n\xff\xfe\n")
    with pytest.raises(EraseError, match="not UTF-8"):
        load_suite(tmp_path / "b.csv")
    with pytest.raises(EraseError, match="--min-nudity needs a 'nudity_percentage' column"):
        load_suite(FIX / "case_num.csv", SuiteFilter(min_nudity=50))
