"""Prompt suites of an audit: one or several prompt files (read by erase/prompts.py) and their digest.

A suite file's format, its column spellings and which rows are skipped are erase/prompts.py's;
here the files of one audit are concatenated with running indices, and `suite_digest` fixes what a
resumed audit must match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from erase.prompts import ALIASES, DEFAULT_GUIDANCE, PromptRow, Suite, SuiteFilter, read_suite

__all__ = ["ALIASES", "DEFAULT_GUIDANCE", "PromptRow", "Suite", "SuiteFilter", "load_suite", "load_suites",
           "read_suite", "read_suites", "suite_digest"]

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
