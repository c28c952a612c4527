"""Prompt suites: I2P-style CSV, plain TXT and JSONL, validated into `PromptRow`s.

I2P (Schramowski et al., https://arxiv.org/abs/2211.05105) ships `sd_seed`, `sd_guidance_scale`,
`sd_image_width`, `sd_image_height`; the copies used by ESD / SalUn / UnlearnDiffAtk rename the
first two to `evaluation_seed` / `evaluation_guidance` and add `case_number`. Both spellings load.
A row's own seed, guidance and size are what make audits comparable across papers, so they are
kept per row; rows without them get `seed = base_seed + index` and guidance 7.5.

Any problem is one `EraseError` line naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from erase.errors import EraseError
from erase.resources import locate

DEFAULT_GUIDANCE = 7.5

# canonical field -> accepted column names, first match wins (I2P spelling, then the ESD copies').
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "caption"),
    "seed": ("sd_seed", "evaluation_seed", "seed"),
    "guidance": ("sd_guidance_scale", "evaluation_guidance", "guidance", "guidance_scale"),
    "width": ("sd_image_width", "width"),
    "height": ("sd_image_height", "height"),
    "id": ("case_number", "id"),
    "label": ("label", "class", "concept", "artist"),
    "categories": ("categories",),
    "nudity_percentage": ("nudity_percentage",),
}


@dataclass(frozen=True)
class PromptRow:
    """One image to make: everything generation needs plus what the metrics compare against."""

    index: int                  # position in the (filtered) suite: the resume key
    id: str                     # case_number if the suite has one, else the index
    prompt: str
    seed: int
    guidance: float = DEFAULT_GUIDANCE
    width: int | None = None    # None: the model's default size
    height: int | None = None
    label: str | None = None    # the concept/class the prompt shows (retention, accuracy)
    categories: tuple[str, ...] = ()
    suite: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d


@dataclass(frozen=True)
class SuiteFilter:
    """Which rows to keep. `categories`: keep rows carrying any of them (I2P `categories`).
    `min_nudity`: keep rows with nudity_percentage >= this. `limit`: first N after filtering."""

    categories: tuple[str, ...] = ()
    min_nudity: float | None = None
    limit: int | None = None
    template: str | None = None   # e.g. "a photo of {prompt}"; may also use {label}
    base_seed: int = 0


def _pick(row: dict, name: str, cols: Iterable[str]) -> tuple[str | None, str | None]:
    for col in ALIASES[name]:
        if col in cols:
            value = row.get(col)
            if value is not None and str(value).strip() != "":
                return col, str(value).strip()
    return None, None


def _number(kind, value: str, where: str, col: str):
    try:
        x = float(value)
        if kind is int:
            if x != int(x):
                raise ValueError
            return int(x)
        return x
    except (TypeError, ValueError):
        raise EraseError(f"{where} column {col!r}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _row(raw: dict, cols: Iterable[str], number: int, where: str, flt: SuiteFilter, suite: str) -> PromptRow | None:
    cols = list(cols)
    col, prompt = _pick(raw, "prompt", cols)
    if prompt is None:
        raise EraseError(f"{where} column {col or 'prompt'!r}: empty prompt")
    col, v = _pick(raw, "seed", cols)
    seed = _number(int, v, where, col) if v is not None else flt.base_seed + number
    if not 0 <= seed < 2**63:
        raise EraseError(f"{where} column {col!r}: seed {seed} out of range [0, 2^63)")
    col, v = _pick(raw, "guidance", cols)
    guidance = _number(float, v, where, col) if v is not None else DEFAULT_GUIDANCE
    if not 0 <= guidance <= 100:
        raise EraseError(f"{where} column {col!r}: guidance {guidance} outside [0, 100]")
    size = {}
    for name in ("width", "height"):
        col, v = _pick(raw, name, cols)
        size[name] = _number(int, v, where, col) if v is not None else None
        if size[name] is not None and (size[name] <= 0 or size[name] % 8):
            raise EraseError(f"{where} column {col!r}: image {name} {size[name]} must be a positive multiple of 8")
    cats = tuple(c.strip() for c in (_pick(raw, "categories", cols)[1] or "").split(",") if c.strip())
    if flt.categories and not set(flt.categories) & set(cats):
        return None
    if flt.min_nudity is not None:
        col, v = _pick(raw, "nudity_percentage", cols)
        if v is None:
            raise EraseError(f"{where} column 'nudity_percentage': missing, but a nudity filter was asked for")
        if _number(float, v, where, col) < flt.min_nudity:
            return None
    label = _pick(raw, "label", cols)[1]
    if flt.template:
        try:
            prompt = flt.template.format(prompt=prompt, label=label or "")
        except (KeyError, IndexError, ValueError) as err:
            raise EraseError(f"template {flt.template!r}: use only {{prompt}} and {{label}} ({err})") from None
    id_ = _pick(raw, "id", cols)[1] or str(number)
    return PromptRow(index=-1, id=id_, prompt=prompt, seed=seed, guidance=guidance, width=size["width"],
                     height=size["height"], label=label, categories=cats, suite=suite)


def _read_csv(path: Path) -> Iterable[tuple[dict, list[str], str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, strict=True)
        try:
            header = reader.fieldnames or []
            if not any(c in header for c in ALIASES["prompt"]):
                raise EraseError(f"{path}: header {header[:6]} has no prompt column (expected one of {list(ALIASES['prompt'])})")
            for n, raw in enumerate(reader, start=1):
                where = f"{path}: row {n} (line {reader.line_num})"
                if None in raw:
                    raise EraseError(f"{where}: {len(header) + len(raw[None])} fields but the header has {len(header)} columns")
                if any(v is None for v in raw.values()):
                    missing = [k for k, v in raw.items() if v is None]
                    raise EraseError(f"{where} column {missing[0]!r}: missing (row has fewer fields than the header)")
                yield raw, header, where
        except csv.Error as err:
            raise EraseError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def _read_jsonl(path: Path) -> Iterable[tuple[dict, list[str], str]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: row {n} (line {n})"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise EraseError(f"{where}: not valid JSON ({err.msg})") from None
            if isinstance(raw, str):
                raw = {"prompt": raw}
            if not isinstance(raw, dict):
                raise EraseError(f"{where}: expected an object with a 'prompt' field")
            yield raw, list(raw), where


def _read_txt(path: Path) -> Iterable[tuple[dict, list[str], str]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield {"prompt": text}, ["prompt"], f"{path}: row {n} (line {n})"


_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".txt": _read_txt}


def load_suite(path: str | Path, flt: SuiteFilter = SuiteFilter(), start_index: int = 0) -> list[PromptRow]:
    """All rows of one suite file, validated and filtered, with `index` counted from `start_index`.

    Rows are small (a few hundred bytes), so even I2P's 4,703 rows are a few MB; the images, not
    the rows, are what generation streams.
    """
    path = locate(path)  # `prompts/...` also means the suites erase ships
    if not path.is_file():
        raise EraseError(f"{path}: no such suite file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise EraseError(f"{path}: unknown suite format {path.suffix!r} (use .csv, .txt or .jsonl)")
    rows: list[PromptRow] = []
    try:
        for n, (raw, cols, where) in enumerate(reader(path)):
            if flt.limit is not None and len(rows) >= flt.limit:
                break
            row = _row(raw, cols, n, where, flt, path.name)
            if row is not None:
                rows.append(PromptRow(**{**row.__dict__, "index": start_index + len(rows)}))
    except UnicodeDecodeError as err:
        raise EraseError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not rows:
        raise EraseError(f"{path}: no prompts left after filtering")
    return rows


def load_suites(paths: list[str | Path], flt: SuiteFilter = SuiteFilter()) -> list[PromptRow]:
    """Several suites concatenated (e.g. the concept's prompts and a retention set)."""
    rows: list[PromptRow] = []
    for p in paths:
        rows += load_suite(p, flt, start_index=len(rows))
    return rows


def suite_digest(rows: list[PromptRow]) -> str:
    """A hash of everything that determines the images: a resumed run must match it."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.index, r.prompt, r.seed, r.guidance, r.width, r.height], sort_keys=True).encode())
    return h.hexdigest()[:16]
