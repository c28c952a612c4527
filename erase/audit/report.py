"""Self-contained HTML reports: one audit (report.html) or several side by side (`erase report`).

Everything is inlined (CSS, images as base64 PNG data URIs, the matplotlib plot), so a report is
one file that can be mailed, archived or opened offline. Grids show each image with the
detector's verdict: the predicted label, its score, and a red frame when the concept was found.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_text

MAX_GRID = 120  # images per grid; the rest are counted, not shown (keeps the page light)

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left;font-size:13px}
th{background:#f0f0f0}.grid{display:flex;flex-wrap:wrap;gap:8px}
.cell{width:132px;font-size:11px;border:3px solid #8c8;padding:3px;background:#fafafa}
.cell.flag{border-color:#d33}.cell img{width:120px;height:120px;image-rendering:pixelated;display:block}
.muted{color:#777}.cell.wide{width:200px}.pair{display:flex;gap:4px}.pair img{width:62px;height:62px}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    return f'<img alt="{html.escape(path.name)}" src="{_data_uri(path.read_bytes())}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else html.escape(str(v))


def _table(rows: list[tuple[str, list]], header: list[str] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in header) + "</tr>" if header else ""
    body = "".join("<tr><th>" + html.escape(k) + "</th>" + "".join(f"<td>{_fmt(v)}</td>" for v in vs) + "</tr>"
                   for k, vs in rows)
    return f"<table>{h}{body}</table>"


def _caption(det: dict, prompt: str | None = None, label: str | None = None) -> str:
    pred = det.get("pred") or "none"
    bits = [f"<b>{html.escape(str(pred))}</b> {det.get('score', 0):.2f}"]
    if det.get("counted"):
        bits.append("counted: " + html.escape(", ".join(det["counted"])))
    if label:
        bits.append(f"row label: {html.escape(label)}")
    if prompt:
        bits.append(f'<span class="muted">{html.escape(prompt[:80])}</span>')
    return "<br>".join(bits)


def _grid(folder: Path, records: list[dict]) -> str:
    cells = []
    for r in records[:MAX_GRID]:
        det = r.get("detection", {})
        cls = "cell flag" if det.get("flag") else "cell"
        cells.append(f'<div class="{cls}">{_img(folder / r["file"])}#{r["index"]} seed {r["seed"]}<br>'
                     f'{_caption(det, r.get("prompt"), r.get("label"))}</div>')
    more = f'<p class="muted">{len(records) - MAX_GRID} more images not shown</p>' if len(records) > MAX_GRID else ""
    return f'<div class="grid">{"".join(cells)}</div>{more}'


def _attack_grid(folder: Path, records: dict[int, dict], attacks: list[dict]) -> str:
    cells = []
    for a in attacks[:MAX_GRID]:
        r = records[a["index"]]
        det = a.get("detection") or r["detection"]
        cls = "cell wide flag" if a["success"] else "cell wide"
        after = _img(folder / a["file"]) if a.get("file") else "<i>flagged without attack</i>"
        target = _img(folder / "targets" / f"{a['index']:05d}.png")
        cells.append(f'<div class="{cls}"><div class="pair">{_img(folder / r["file"])}{after}{target}</div>'
                     f'#{a["index"]} steps {a.get("steps", 0)}<br>{_caption(det)}<br>'
                     f'<span class="muted">{html.escape(a.get("adv_prompt", r["prompt"])[:100])}</span></div>')
    return f'<div class="grid">{"".join(cells)}</div>'


def _plot(named: dict[str, dict]) -> str:
    """Bars of the rates of each audit (one colour per audit), as an inline PNG."""
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
    return f'<img alt="metrics plot" src="{_data_uri(buf.getvalue())}">'


def _settings_rows(results: dict) -> list[tuple[str, list]]:
    gen, att = results["generation"], results.get("attack")
    rows = [("model", [results["model"]]), ("protocol", [results["protocol"]["id"]]),
            ("concept", [results.get("concept")]), ("suites", [", ".join(results["suites"])]),
            ("scheduler / steps", [f'{gen["scheduler"]} / {gen["steps"]}']), ("safety checker", [gen["safety_checker"]]),
            ("seeding", [gen["seeding"]])]
    if att:
        rows.append(("attack", [", ".join(f"{k}={v}" for k, v in att.items() if v is not None)]))
    rows.append(("detector", [", ".join(f"{k}={v}" for k, v in results["protocol"].items() if k != "id")]))
    rows.append(("versions", [", ".join(f"{k} {v}" for k, v in results["versions"].items())]))
    return rows


def _metric_rows(ms: list[dict]) -> list[tuple[str, list]]:
    keys = []
    for m in ms:
        keys += [k for k in m if k not in keys and not k.endswith("_note")]
    return [(k, [m.get(k) for m in ms]) for k in keys]


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


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
    notes = "".join(f'<p class="muted">{html.escape(k)}: {html.escape(v)}</p>' for k, v in m.items() if k.endswith("_note"))
    body = ["<h2>Metrics</h2>", _table(_metric_rows([m])), notes, _plot({results["model"]: m}),
            "<h2>Settings</h2>", _table(_settings_rows(results)),
            f"<h2>Images ({len(records)})</h2>", _grid(folder, records)]
    if attacks:
        by_index = {int(r["index"]): r for r in records}
        body += [f"<h2>Attack: {html.escape(results['attack']['name'])} ({len(attacks)} prompts)</h2>",
                 ('<p class="muted">per prompt: no-attack image | attacked image | target image of the concept '
                  '(UnlearnDiffAtk, concept inversion); red = concept found (without or with the attack)</p>'),
                 _attack_grid(folder, by_index, attacks)]
    atomic_write_bytes(folder / "grid.png", _grid_png(folder, records))
    return atomic_write_text(folder / "report.html", _page(f"erase audit: {results['model']}", "".join(body)))


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
    """One page with the audits' metrics side by side and their images aligned by suite row."""
    folders = [Path(f).expanduser() for f in folders]
    loaded = [_load_audit(f) for f in folders]
    names = [f"{f.name} ({res['model']})" for f, (res, _) in zip(folders, loaded)]
    ms = [res["metrics"] for res, _ in loaded]
    body = ["<h2>Metrics</h2>", _table(_metric_rows(ms), [""] + names),
            _plot({n: m for n, m in zip(names, ms)}), "<h2>Settings</h2>"]
    setting_rows = [_settings_rows(res) for res, _ in loaded]
    body.append(_table([(k, [r[i][1][0] if i < len(r) else None for r in setting_rows])
                        for i, (k, _) in enumerate(setting_rows[0])], [""] + names))
    if len({res["suite_digest"] for res, _ in loaded}) > 1:
        body.append('<p><b>Warning:</b> the audits used different suites or seeds; rows are not comparable one to one.</p>')
    n = min(len(recs) for _, recs in loaded)
    body.append(f"<h2>Images side by side ({n} rows)</h2>")
    header = "<tr><th>row</th>" + "".join(f"<th>{html.escape(x)}</th>" for x in names) + "</tr>"
    trs = []
    for i in range(min(n, MAX_GRID)):
        cells = []
        for f, (_, recs) in zip(folders, loaded):
            r = recs[i]
            det = r["detection"]
            cls = "cell flag" if det.get("flag") else "cell"
            cells.append(f'<td><div class="{cls}">{_img(f / r["file"])}{_caption(det)}</div></td>')
        trs.append(f'<tr><th>#{i}<br><span class="muted">{html.escape(loaded[0][1][i]["prompt"][:60])}</span></th>{"".join(cells)}</tr>')
    body.append(f"<table>{header}{''.join(trs)}</table>")
    return atomic_write_text(Path(out), _page("erase report: " + " vs ".join(names), "".join(body)))
