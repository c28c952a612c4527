"""Prompt files, the shared input of training and audits: I2P-style CSV, plain TXT and JSONL, read
into `PromptRow`s (`erase train` reads `data.*.file`, `erase audit` its suites, erase/audit/suites.py).

I2P (Schramowski et al., https://arxiv.org/abs/2211.05105) ships `sd_seed`, `sd_guidance_scale`,
`sd_image_width`, `sd_image_height`; the copies used by ESD / SalUn / UnlearnDiffAtk rename the
first two to `evaluation_seed` / `evaluation_guidance` and add `case_number`; AdvUnlearn's lists
say `case_num`, ESD's ImageNet list `label_str`. All of these spellings load (`ALIASES`). A row's
own seed, guidance and size are what make audits comparable across papers, so they are kept per
row; rows without them get `seed = base_seed + row number` and guidance 7.5.

Filters (`--category`, `--min-nudity`) apply first; then each remaining row is validated. A row
that cannot be generated (no prompt, a seed that is not an integer in [0, 2^63), a negative or
non-finite guidance, a size that is not a positive multiple of 8, a broken CSV/JSON line) is
skipped and counted with its reason (`Suite.skipped`), never fatal: real published files carry a
few such rows (the ESD/SalUn copy of I2P has one row without a prompt). Only problems with the
file as a whole (missing, not UTF-8, no prompt column, nothing usable) are one `EraseError` line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from erase.errors import EraseError
from erase.resources import locate

DEFAULT_GUIDANCE = 7.5

# canonical field -> accepted column names; the first one the file has feeds the field.
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "caption"),
    "seed": ("sd_seed", "evaluation_seed", "seed"),
    "guidance": ("sd_guidance_scale", "evaluation_guidance", "guidance", "guidance_scale", "cfg_scale"),
    "width": ("sd_image_width", "width"),
    "height": ("sd_image_height", "height"),
    "id": ("case_number", "case_num", "id", "image_id"),
    "label": ("label", "label_str", "class", "concept", "artist"),
    "categories": ("categories",),
    "nudity_percentage": ("nudity_percentage",),
    "embeddings": ("embeddings",),  # a .safetensors file an attack found (erase/audit/attacks/found.py)
}


@dataclass(frozen=True)
class PromptRow:
    """One image to make: everything generation needs plus what the metrics compare against."""

    index: int                  # position in the (filtered) suite: the resume key
    id: str                     # case_number if the suite has one, else the row number
    prompt: str
    seed: int
    guidance: float = DEFAULT_GUIDANCE
    width: int | None = None    # None: the model's default size
    height: int | None = None
    label: str | None = None    # the concept/class the prompt shows (retention, accuracy)
    categories: tuple[str, ...] = ()
    suite: str = ""
    embeddings: str | None = None  # continuous attack prompts: the .safetensors file (absolute path)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        if d["embeddings"] is None:  # plain prompts: records as before continuous suites existed
            d.pop("embeddings")
        return d


@dataclass(frozen=True)
class SuiteFilter:
    """Which rows to keep. `categories`: keep rows carrying any of them (I2P `categories`).
    `min_nudity`: keep rows with nudity_percentage >= this. `limit`: first N usable rows after filtering."""

    categories: tuple[str, ...] = ()
    min_nudity: float | None = None
    limit: int | None = None
    template: str | None = None   # e.g. "a photo of {prompt}"; may also use {label}
    base_seed: int = 0


@dataclass
class Suite:
    """One file's rows plus how they were read: what `results.json` and `--dry-run` report."""

    file: str
    rows: list[PromptRow]
    rows_read: int = 0        # data rows in the file (up to --limit)
    filtered_out: int = 0     # dropped by --category / --min-nudity
    skipped: list[dict] = field(default_factory=list)   # {"row", "line", "column", "reason"}
    columns: dict[str, str] = field(default_factory=dict)  # field -> the column that fed it
    ignored_columns: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"file": Path(self.file).name, "rows_read": self.rows_read, "filtered_out": self.filtered_out,
                "loaded": len(self.rows), "skipped": len(self.skipped), "columns": dict(self.columns),
                "ignored_columns": list(self.ignored_columns), "skipped_rows": list(self.skipped)}

    def summary(self) -> str:
        """One line: counts, and the first skipped row's reason."""
        text = f"{Path(self.file).name}: {len(self.rows)} prompts loaded"
        if self.filtered_out:
            text += f", {self.filtered_out} filtered out"
        if self.skipped:
            first = self.skipped[0]
            more = f"; first: row {first['row']}" + (f" column {first['column']!r}" if first["column"] else "")
            text += f", {len(self.skipped)} row{'s' * (len(self.skipped) != 1)} skipped{more}: {first['reason']}"
        return text

    def describe_columns(self) -> str:
        used = ", ".join(f"{k}<-{v}" for k, v in self.columns.items()) or "none"
        names = [c or "(unnamed)" for c in self.ignored_columns]
        ignored = f"; ignored: {', '.join(names)}" if names else ""
        return f"{Path(self.file).name} columns: {used}{ignored}"


class _Skip(Exception):
    """This row cannot be used: (column, reason)."""

    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column, self.reason = column, reason


def column_map(cols: Iterable[str]) -> dict[str, str]:
    """field -> the first accepted column present in `cols`."""
    cols = list(cols)
    return {name: next(c for c in aliases if c in cols) for name, aliases in ALIASES.items()
            if any(c in cols for c in aliases)}


def _value(raw: dict, cmap: dict[str, str], name: str) -> str | None:
    col = cmap.get(name)
    value = raw.get(col) if col else None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: str, col: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        x = float(value)
    except ValueError:
        raise _Skip(col, f"{what} {value!r} is not an integer") from None
    if not math.isfinite(x) or x != int(x):
        raise _Skip(col, f"{what} {value!r} is not an integer")
    return int(x)


def _row(raw: dict, cmap: dict[str, str], number: int, flt: SuiteFilter, suite: str,
         folder: Path = Path(".")) -> PromptRow | None:
    """The row as a PromptRow, None if a filter drops it; raises _Skip if it cannot be used."""
    cats = tuple(c.strip() for c in (_value(raw, cmap, "categories") or "").split(",") if c.strip())
    if flt.categories and not set(flt.categories) & set(cats):
        return None
    if flt.min_nudity is not None:
        col, v = cmap.get("nudity_percentage"), _value(raw, cmap, "nudity_percentage")
        try:
            nudity = float(v) if v is not None else math.nan
        except ValueError:
            nudity = math.nan
        if math.isnan(nudity):
            raise _Skip(col, f"nudity_percentage {v!r} is not a number (needed by the nudity filter)")
        if nudity < flt.min_nudity:
            return None
    prompt = _value(raw, cmap, "prompt")
    if prompt is None:
        raise _Skip(cmap.get("prompt", "prompt"), "empty prompt")
    v = _value(raw, cmap, "seed")
    seed = _int(v, cmap.get("seed"), "seed") if v is not None else flt.base_seed + number
    if not 0 <= seed < 2**63:
        raise _Skip(cmap.get("seed"), f"seed {seed} outside [0, 2^63)")
    v = _value(raw, cmap, "guidance")
    guidance = DEFAULT_GUIDANCE
    if v is not None:
        try:
            guidance = float(v)
        except ValueError:
            raise _Skip(cmap.get("guidance"), f"guidance {v!r} is not a number") from None
        if not math.isfinite(guidance) or guidance < 0:
            raise _Skip(cmap.get("guidance"), f"guidance {v} is not a finite number >= 0")
    size = {}
    for name in ("width", "height"):
        v = _value(raw, cmap, name)
        size[name] = _int(v, cmap.get(name), f"image {name}") if v is not None else None
        if size[name] is not None and (size[name] <= 0 or size[name] % 8):
            raise _Skip(cmap.get(name), f"image {name} {size[name]} is not a positive multiple of 8")
    label = _value(raw, cmap, "label")
    if flt.template:
        try:
            prompt = flt.template.format(prompt=prompt, label=label or "")
        except (KeyError, IndexError, ValueError) as err:
            raise EraseError(f"template {flt.template!r}: use only {{prompt}} and {{label}} ({err})") from None
    id_ = _value(raw, cmap, "id") or str(number)
    embeddings = _value(raw, cmap, "embeddings")
    if embeddings is not None:
        found = (folder / embeddings).resolve()
        if not found.is_file():
            raise _Skip(cmap.get("embeddings"), f"embeddings file {embeddings!r} not found next to the suite")
        embeddings = str(found)
    return PromptRow(index=-1, id=id_, prompt=prompt, seed=seed, guidance=guidance, width=size["width"],
                     height=size["height"], label=label, categories=cats, suite=suite, embeddings=embeddings)


# A reader yields (row number, line number, raw dict or a _Skip for a broken line, columns of this row).
Raw = tuple[int, int, "dict | _Skip", list[str]]


def _read_csv(path: Path) -> Iterator[Raw]:
    # utf-8-sig: a byte-order mark (Excel's CSV export) would otherwise glue itself to the first column name
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, strict=True)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if not any(c in header for c in ALIASES["prompt"]):
                raise EraseError(f"{path}: header {header[:6]} has no prompt column (expected one of {list(ALIASES['prompt'])})")
            for n, raw in enumerate(reader):
                if None in raw:
                    item: dict | _Skip = _Skip(None, f"{len(header) + len(raw[None])} fields but the header has {len(header)} columns")
                else:
                    item = {k: ("" if v is None else v) for k, v in raw.items()}  # short rows: missing = empty
                yield n, reader.line_num, item, header
        except csv.Error as err:
            raise EraseError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def _read_jsonl(path: Path) -> Iterator[Raw]:
    with path.open(encoding="utf-8-sig") as f:
        n = 0
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                yield n, line_no, _Skip(None, f"not valid JSON ({err.msg})"), []
                n += 1
                continue
            if isinstance(raw, str):
                raw = {"prompt": raw}
            if not isinstance(raw, dict):
                yield n, line_no, _Skip(None, "expected an object with a 'prompt' field or a string"), []
            else:
                yield n, line_no, raw, list(raw)
            n += 1


def _read_txt(path: Path) -> Iterator[Raw]:
    with path.open(encoding="utf-8-sig") as f:
        n = 0
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield n, line_no, {"prompt": text}, ["prompt"]
                n += 1


_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".txt": _read_txt}


def read_suite(path: str | Path, flt: SuiteFilter = SuiteFilter(), start_index: int = 0) -> Suite:
    """One suite file: filtered, validated rows with `index` counted from `start_index`, plus the
    skipped rows and the column mapping.

    Rows are small (a few hundred bytes), so even I2P's 4,703 rows are a few MB; the images, not
    the rows, are what generation streams.
    """
    path = locate(path)  # `prompts/...` also means the suites erase ships
    if not path.is_file():
        raise EraseError(f"{path}: no such suite file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise EraseError(f"{path}: unknown suite format {path.suffix!r} (use .csv, .txt or .jsonl)")
    suite = Suite(file=str(path), rows=[])
    seen_cols: dict[str, None] = {}
    used: dict[str, dict[str, None]] = {}
    cmap: dict[str, str] = {}
    last_cols: list[str] | None = None
    try:
        for number, line, raw, cols in reader(path):
            if flt.limit is not None and len(suite.rows) >= flt.limit:
                break
            suite.rows_read += 1
            if cols is not last_cols:  # CSV: one header; JSONL: each object its own keys
                cmap, last_cols = column_map(cols), cols
                seen_cols.update(dict.fromkeys(cols))
                if flt.min_nudity is not None and "nudity_percentage" not in cmap and path.suffix.lower() == ".csv":
                    raise EraseError(f"{path}: --min-nudity needs a 'nudity_percentage' column; the header has none")
            try:
                if isinstance(raw, _Skip):
                    raise raw
                row = _row(raw, cmap, number, flt, path.name, path.parent)
            except _Skip as skip:
                suite.skipped.append({"row": number + 1, "line": line, "column": skip.column, "reason": skip.reason})
                continue
            if row is None:
                suite.filtered_out += 1
                continue
            for name, col in cmap.items():
                if _value(raw, cmap, name) is not None:
                    used.setdefault(name, {})[col] = None
            suite.rows.append(PromptRow(**{**row.__dict__, "index": start_index + len(suite.rows)}))
    except UnicodeDecodeError as err:
        raise EraseError(f"{path}: not UTF-8 text (byte {err.start})") from None
    suite.columns = {name: " | ".join(cols) for name, cols in used.items()}
    fed = {c for cols in used.values() for c in cols} | {c for c in cmap.values()}
    suite.ignored_columns = [c for c in seen_cols if c not in fed]
    if not suite.rows:
        why = f"; {len(suite.skipped)} rows skipped, first: row {suite.skipped[0]['row']}: {suite.skipped[0]['reason']}" if suite.skipped else ""
        raise EraseError(f"{path}: no prompts left after filtering ({suite.rows_read} rows read, {suite.filtered_out} filtered out{why})")
    return suite
