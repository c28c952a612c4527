"""`erase train --dry-run`: build the run at real size without weights, check it, estimate memory.

Everything is built on the meta device (nothing allocated): the objective and its config, the
parameter selection (LoRA adapters included), and the data prompts. The memory estimate counts
weights in their training dtypes, the original-model copy the selection implies, gradients and
optimizer state; activations are not counted (they depend on resolution and batch).
"""

from __future__ import annotations

from typing import Any

from erase.objectives import build_objective
from erase.train.config import RunConfig
from erase.train.data import expand
from erase.train.model import meta_model
from erase.train.params import count, select_parameters

BYTES = {"no": 4, "fp16": 2, "bf16": 2}
OPT_STATES = {"adamw": 2, "adam": 2, "sgd": 0}


def dry_run(cfg: RunConfig, where: str = "<config>") -> dict[str, Any]:
    objective = build_objective(cfg.method, cfg.objective, where)
    spec = cfg.params.train if cfg.params.train != "auto" else objective.default_params
    pipe, how = meta_model(cfg.model, f"{where}: model")
    pipe.vae.requires_grad_(False)
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, spec, cfg.params.exclude,
                            cfg.params.lora, f"{where}: params.train")
    t = cfg.train
    wbytes = BYTES[t.mixed_precision or "no"]  # unset: the launcher's choice, counted as fp32
    report: dict[str, Any] = {"architecture": how, "method": cfg.method, "param_set": spec, "kinds": sel.kinds, "modules": {},
                              "tensors": {m: _kinds_of_tensors(names) for m, names in sel.names.items()}}
    trainable_total = frozen_bytes = original_bytes = 0
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        tr, tot = count(module)
        report["modules"][name] = {"trainable": tr, "total": tot}
        trainable_total += tr
        kind = sel.kinds.get(name)
        if kind in (None, "lora"):
            frozen_bytes += (tot - tr) * wbytes
        elif kind == "partial":
            frozen_bytes += (tot - tr) * 4
            original_bytes += tr * 4  # saved originals of the trained tensors
        else:
            original_bytes += tot * wbytes  # frozen copy
    trained_bytes = trainable_total * 4 * (1 + 1 + OPT_STATES[t.optimizer])  # fp32 weights + grads + optimizer
    estimate = frozen_bytes + original_bytes + trained_bytes
    report.update(
        trainable=trainable_total,
        total=sum(m["total"] for m in report["modules"].values()),
        forget_samples=len(expand(cfg.data.forget, f"{where}: data.forget")),
        retain_samples=len(expand(cfg.data.retain, f"{where}: data.retain")),
        needs=sorted(objective.needs),
        memory_bytes={"frozen_weights": frozen_bytes, "original_model": original_bytes,
                      "trainable_weights_grads_optimizer": trained_bytes, "total_excluding_activations": estimate},
    )
    return report


def _kinds_of_tensors(names: list[str]) -> dict[str, Any]:
    """Trained tensors summarised by the last three non-numeric parts of their names (e.g.
    attn2.to_k.weight), and their number."""
    kinds = sorted({".".join([p for p in n.split(".") if not p.isdigit()][-3:]) for n in names})
    return {"count": len(names), "kinds": kinds}


def format_report(r: dict[str, Any]) -> str:
    gib = 1024**3
    lines = [
        f"dry run: {r['method']} on {r['architecture']}",
        f"  trained parameter set: {r['param_set']} ({', '.join(f'{k}: {v}' for k, v in r['kinds'].items())})",
    ]
    for name, m in r["modules"].items():
        lines.append(f"  {name:<13} trainable {m['trainable']:>13,} / {m['total']:>13,}")
        t = r.get("tensors", {}).get(name)
        if t:
            shown = ", ".join(t["kinds"][:8]) + (f", ... ({len(t['kinds'])} kinds)" if len(t["kinds"]) > 8 else "")
            lines.append(f"  {'':<13} {t['count']} tensors: {shown}")
    lines.append(f"  total         trainable {r['trainable']:>13,} / {r['total']:>13,} ({100 * r['trainable'] / max(1, r['total']):.2f}%)")
    lines.append(f"  data: {r['forget_samples']} forget samples, {r['retain_samples']} retain samples; needs: {', '.join(r['needs']) or 'prompts only'}")
    mem = r["memory_bytes"]
    lines.append("  estimated memory (weights, grads, optimizer; activations not included):")
    for k, v in mem.items():
        lines.append(f"    {k:<34} {v / gib:8.2f} GiB")
    return "\n".join(lines)
