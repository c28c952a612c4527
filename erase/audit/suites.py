"""Prompt suites of an audit: one or several prompt files (read by erase/prompts.py) and their digest.

A suite file's format, its column spellings and which rows are skipped are erase/prompts.py's;
here the files of one audit are concatenated with running indices, `expand_rows` makes the rows as
generated (images per prompt, a protocol's fixed guidance and size), and `suite_digest` fixes what a
resumed audit must match. COCO caption suites (ESD/UCE's coco_30k.csv: image_id, prompt,
evaluation_seed; AdvUnlearn's coco_10k.csv) load as any CSV; `coco_image_files` finds the real
COCO images of their rows for FID.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

from erase.prompts import ALIASES, DEFAULT_GUIDANCE, PromptRow, Suite, SuiteFilter, read_suite

__all__ = [
    "ALIASES",
    "DEFAULT_GUIDANCE",
    "PromptRow",
    "Suite",
    "SuiteFilter",
    "coco_image_files",
    "expand_rows",
    "load_suite",
    "load_suites",
    "read_suite",
    "read_suites",
    "suite_digest",
]

_EVERY_ROW = SuiteFilter()  # frozen: a safe shared default


def load_suite(path: str | Path, flt: SuiteFilter = _EVERY_ROW, start_index: int = 0) -> list[PromptRow]:
    """The usable rows of one suite file (see `read_suite` for what was skipped and why)."""
    return read_suite(path, flt, start_index).rows


def read_suites(paths: list[str | Path], flt: SuiteFilter = _EVERY_ROW) -> list[Suite]:
    """Several suites, indices running on across files (e.g. the concept's prompts and a retention set)."""
    suites: list[Suite] = []
    n = 0
    for p in paths:
        suites.append(read_suite(p, flt, start_index=n))
        n += len(suites[-1].rows)
    return suites


def load_suites(paths: list[str | Path], flt: SuiteFilter = _EVERY_ROW) -> list[PromptRow]:
    """Several suites concatenated (e.g. the concept's prompts and a retention set)."""
    return [r for s in read_suites(paths, flt) for r in s.rows]


def suite_digest(rows: list[PromptRow]) -> str:
    """A hash of everything that determines the images: a resumed run must match it."""
    h = hashlib.sha256()
    for r in rows:
        key = [r.index, r.prompt, r.seed, r.guidance, r.width, r.height] + ([r.embeddings] if r.embeddings else [])
        h.update(json.dumps(key, sort_keys=True).encode())
    return h.hexdigest()[:16]


def expand_rows(rows: list[PromptRow], per_prompt: int = 1, guidance: float | None = None,
                size: int | None = None) -> list[PromptRow]:
    """Rows as generated: `per_prompt` images of each prompt (index i * per_prompt + k, the row's own
    seed, `extra["sample"] = k`: image k is the k-th slice of one batch draw from that seed, as the
    official scripts make them), with a fixed guidance and square size when given (a protocol's)."""
    if per_prompt == 1 and guidance is None and size is None:
        return rows
    out = []
    for i, r in enumerate(rows):
        fixed = replace(r, guidance=r.guidance if guidance is None else float(guidance),
                        width=r.width if size is None else size, height=r.height if size is None else size)
        for k in range(per_prompt):
            out.append(replace(fixed, index=i * per_prompt + k, extra={**r.extra, "sample": k} if per_prompt > 1 else r.extra))
    return out



def coco_image_files(files: list[Path], ids: list[str]) -> list[Path]:
    """The COCO images of a caption suite's rows, in row order: a coco_30k.csv / coco_10k.csv (ESD, UCE,
    AdvUnlearn) names each caption's image by `image_id` / `case_number`, COCO's 12-digit zero-padded id
    (000000203564; row numbers are never taken for ids), and the
    COCO files end in that number (COCO_val2014_000000203564.jpg, 000000203564.jpg). Ids with no
    file are left out (the caller reports how many images it used); each file is used once."""
    by_id: dict[int, Path] = {}
    for f in files:
        m = re.search(r"(\d+)$", Path(f).stem)
        if m:
            by_id.setdefault(int(m.group(1)), Path(f))
    picked = [by_id[int(i)] for i in ids if re.fullmatch(r"\d{12}", i.strip()) and int(i) in by_id]
    return list(dict.fromkeys(picked))
