"""Pieces every attack shares: named budgets, frozen model parameters, judging one image.

Budgets. Each attack's settings dataclass has a `budget` field and a class attribute `BUDGETS`
(name -> the fields that name sets; the dataclass defaults are the published budget). `from_budget`
builds the settings of a named budget with explicit overrides on top; when an override changes a
value the recorded budget reads "NAME+custom", so results.json never calls a changed budget by its
published name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields, replace

import numpy as np
import torch

from erase.audit.generate import to_uint8


def from_budget(cls, name: str, **overrides):
    """Settings of the named budget; `overrides` with value None are ignored."""
    budgets = cls.BUDGETS
    if name not in budgets:
        raise ValueError(f"budget: {name!r} is not one of {', '.join(budgets)}")
    base = cls(budget=name, **budgets[name])
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    changed = {k: v for k, v in given.items() if getattr(base, k) != v}
    return replace(base, **changed, budget=name + "+custom") if changed else base


def check_budget_name(cls, name: str) -> None:
    """`__post_init__` helper: a budget is one of BUDGETS, optionally with "+custom"."""
    if name.removesuffix("+custom") not in cls.BUDGETS:
        raise ValueError(f"budget: {name!r} is not one of {', '.join(cls.BUDGETS)}")


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Parameters get no gradients while active; their requires_grad flags come back on exit."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, flags):
            p.requires_grad_(r)


def judge(detector, image: np.ndarray) -> dict:
    """The detection of one float image [H, W, 3], judged as the saved PNG (uint8) is."""
    return detector(to_uint8(np.asarray(image)[None]).astype(np.float32) / 255.0)[0]
