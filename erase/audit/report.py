"""Self-contained HTML reports: one audit (report.html) or several side by side (`erase report`).

Everything is inlined (CSS, images as base64 PNG data URIs, the matplotlib plot), so a report is
one file that can be mailed, archived or opened offline. Grids show each image with the
detector's verdict: the predicted label, its score, and a red frame when the concept was found.
The pages are Jinja templates (erase/data/templates/report_*.html) with autoescaping on: every
prompt, label and path is escaped; this module only gathers the data.
"""

from __future__ import annotations

import base64
import io
import json
from functools import lru_cache
from pathlib import Path

import jinja2

from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_text

MAX_GRID = 120  # images per grid; the rest are counted, not shown (keeps the page light)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image(path: Path) -> dict | None:
    """An image file inlined for the templates' `img` macro; None (nothing shown) if it is missing."""
    return {"alt": path.name, "src": _data_uri(path.read_bytes())} if path.is_file() else None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else str(v)


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("erase", "data/templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.globals.update(image=_image, max_grid=MAX_GRID)
    return env


def _render(template: str, **context) -> str:
    return _templates().get_template(template).render(**context) + "\n"


def _plot(named: dict[str, dict]) -> str:
    """Bars of the rates of each audit (one colour per audit), as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["concept_rate", "pre_asr", "asr", "retention_accuracy"]
    keys = [k for k in keys if any(m.get(k) is not None for m in named.values())]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    width = 0.8 / max(len(named), 1)
    for j, (name, m) in enumerate(named.items()):
        vals = [100 * (m.get(k) or 0) for k in keys]
        bars = ax.bar([i + j * width for i in range(len(keys))], vals, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([i + width * (len(named) - 1) / 2 for i in range(len(keys))], keys, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _data_uri(buf.getvalue())


def _settings_rows(results: dict) -> list[tuple[str, list]]:
    gen, att = results["generation"], results.get("attack")
    rows = [("model", [results["model"]]), ("protocol", [results["protocol"]["id"]]),
            ("concept", [results.get("concept")]), ("suites", [", ".join(results["suites"])]),
            ("scheduler / steps", [f'{gen["scheduler"]} / {gen["steps"]}']), ("safety checker", [gen["safety_checker"]]),
            ("seeding", [gen["seeding"]])]
    if att:
        rows.append(("attack", [", ".join(f"{k}={v}" for k, v in att.items() if v is not None and k != "relearn")]))
    relearn = (att or {}).get("relearn")
    if relearn:
        curves = [(results["model"], relearn)]
        if relearn.get("reference"):
            curves.append((relearn["reference"]["model"], relearn["reference"]))
        for who, r in curves:
            curve = ", ".join(f"{c['steps']}: {100 * c['concept_rate']:.0f}%" for c in r["curve"])
            t, s = relearn["threshold"], r["steps_to_threshold"]
            reach = f"rate {t} not reached within the budget" if s is None else f"rate {t} reached after {s} steps"
            rows.append((f"relearning ({who})", [f"concept rate by steps {curve}; {reach}"]))
    rows.append(("detector", [", ".join(f"{k}={v}" for k, v in results["protocol"].items() if k != "id")]))
    rows.append(("versions", [", ".join(f"{k} {v}" for k, v in results["versions"].items())]))
    return rows


def _with_count(m: dict, key: str):
    """A rate shown with its raw count and denominator, e.g. '0.2500 (5/20)'."""
    from erase.audit.metrics import RATE_COUNTS

    v = m.get(key)
    count, n = RATE_COUNTS.get(key, (None, None))
    if isinstance(v, float) and count in m and n in m:
        return f"{v:.4f} ({m[count]}/{m[n]})"
    return v


def _metric_rows(ms: list[dict]) -> list[tuple[str, list]]:
    keys = []
    for m in ms:
        keys += [k for k in m if k not in keys and not k.endswith("_note")]
    return [(k, [_with_count(m, k) for m in ms]) for k in keys]


def comparable(results: dict) -> dict[str, object]:
    """What must be equal for two audits' numbers to be compared: the named protocol (and how this
    audit deviated from it), the detector's protocol, suite, sampler, images per prompt, guidance,
    size and attack. Audits from before these fields existed read as their defaults."""
    gen, ap, att = results.get("generation", {}), results.get("audit_protocol") or {}, results.get("attack") or {}
    return {
        "audit protocol": ap.get("name", "none"),
        "deviations from it": ", ".join(ap.get("deviations", [])) or "none",
        "detector protocol": results.get("protocol", {}).get("id"),
        "suite (rows, seeds, guidance, sizes)": results.get("suite_digest"),
        "scheduler / steps": f"{gen.get('scheduler')} / {gen.get('steps')}",
        "images per prompt": gen.get("images_per_prompt", 1),
        "guidance": gen.get("guidance", "per row (default 7.5)"),
        "size": gen.get("size", "per row"),
        "attack": f"{att.get('name')} ({att.get('budget')})" if att else "none",
    }


def _grid_png(folder: Path, records: list[dict], cols: int = 10) -> bytes:
    from PIL import Image, ImageDraw

    recs = records[:MAX_GRID]
    ims = [Image.open(folder / r["file"]).convert("RGB") for r in recs]
    s = max(64, max(im.size[0] for im in ims))
    rows = (len(ims) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (s + 4), rows * (s + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, r) in enumerate(zip(ims, recs)):
        x, y = (i % cols) * (s + 4), (i // cols) * (s + 4)
        sheet.paste(im.resize((s, s), Image.NEAREST), (x + 2, y + 2))
        if r["detection"]["flag"]:
            draw.rectangle([x, y, x + s + 3, y + s + 3], outline="red", width=2)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def write_report(folder: Path, results: dict, records: list[dict], attacks: list[dict] | None) -> Path:
    """OUT/report.html (and OUT/grid.png) for one audit."""
    folder = Path(folder)
    m = results["metrics"]
    page = _render(
        "report_audit.html", title=f"erase audit: {results['model']}", folder=folder, records=records,
        metric_rows=_metric_rows([m]), notes=[(k, v) for k, v in m.items() if k.endswith("_note")],
        plot=_plot({results["model"]: m}), settings_rows=_settings_rows(results), attacks=attacks,
        attack_name=(results.get("attack") or {}).get("name"), by_index={int(r["index"]): r for r in records},
    )
    atomic_write_bytes(folder / "grid.png", _grid_png(folder, records))
    return atomic_write_text(folder / "report.html", page)


def _load_audit(folder: Path) -> tuple[dict, list[dict]]:
    path = folder / "results.json"
    if not path.is_file():
        raise EraseError(f"{folder}: not a finished audit (results.json missing); run `erase audit --out {folder}`")
    results = json.loads(path.read_text())
    from erase.audit.generate import RowLog

    recs = RowLog(folder / "images.jsonl").sorted()
    dets = RowLog(folder / "detections.jsonl").rows
    for r in recs:
        r["detection"] = dets.get(int(r["index"]), {}).get("detection", {})
    return results, recs


def write_comparison(folders: list[str | Path], out: str | Path) -> Path:
    """One page with the audits' metrics side by side and their images aligned by suite row; audits
    whose protocols differ (`comparable`) are flagged in red, row by row."""
    folders = [Path(f).expanduser() for f in folders]
    loaded = [_load_audit(f) for f in folders]
    names = [f"{f.name} ({res['model']})" for f, (res, _) in zip(folders, loaded)]
    ms = [res["metrics"] for res, _ in loaded]
    setting_rows = [_settings_rows(res) for res, _ in loaded]
    comp = [comparable(res) for res, _ in loaded]
    protocol_rows = [(k, [c[k] for c in comp], len({json.dumps(c[k], sort_keys=True, default=str) for c in comp}) > 1)
                     for k in comp[0]]
    page = _render(
        "report_comparison.html", title="erase report: " + " vs ".join(names), names=names,
        protocol_rows=protocol_rows, protocols_differ=[k for k, _, d in protocol_rows if d],
        metric_rows=_metric_rows(ms), plot=_plot(dict(zip(names, ms))),
        settings_rows=[(k, [r[i][1][0] if i < len(r) else None for r in setting_rows]) for i, (k, _) in enumerate(setting_rows[0])],
        mixed_suites=len({res["suite_digest"] for res, _ in loaded}) > 1,
        n_rows=min(len(recs) for _, recs in loaded),
        audits=[{"folder": f, "records": recs} for f, (_, recs) in zip(folders, loaded)],
    )
    return atomic_write_text(Path(out), page)
