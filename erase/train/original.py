"""The ORIGINAL model's predictions during training, without a second full copy where possible.

Per trained module, by how it is trained (erase.train.params.Selection.kinds):
  lora     disable the adapters (the base weights ARE the original)         extra memory: none
  partial  keep the original values of the trained tensors only; swap them  extra: the trained tensors
           in for the duration of `with models.original():`                 (FSDP2: this rank's shards)
  full     a frozen copy in the weight dtype                                extra: one module copy
Frozen modules are the original already. The context always runs under torch.no_grad().
After `accelerator.prepare` the trainer calls `rebind()`: FSDP2 replaces the parameters with
sharded DTensors (and DeepSpeed may recast them), so the saved originals are taken again from the
prepared module, before any step; a sharded parameter's values are swapped in place, in the
storage FSDP2 all-gathers from.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from erase.objectives.base import Models
from erase.train.engines import reshard
from erase.train.params import Selection, enable_lora


class Original:
    """Callable returning the `original()` context manager of `Models`; reports its extra memory."""

    def __init__(self, models: Models, selection: Selection, weight_dtype: torch.dtype):
        self.models = models
        self.selection = selection
        self.saved: dict[str, list[tuple[nn.Parameter, torch.Tensor]]] = {}
        self.copies: dict[str, nn.Module] = {}
        self.depth = 0  # re-entrant: only the outermost `with` swaps (objectives may nest it)
        for name, kind in selection.kinds.items():
            module: nn.Module = getattr(models, name)
            if kind == "partial":
                params = dict(module.named_parameters())
                self.saved[name] = [(params[n], params[n].detach().clone()) for n in selection.names[name]]
            elif kind == "full":
                frozen = copy.deepcopy(module).requires_grad_(False).eval()
                self.copies[name] = frozen.to(dtype=weight_dtype) if weight_dtype != torch.float32 else frozen

    def rebind(self) -> None:
        """Take the partial originals again from the (prepared) modules: same values, new tensors."""
        for name in self.saved:
            module = getattr(self.models, name)
            params = dict(getattr(module, "module", module).named_parameters())
            self.saved[name] = [(params[n], params[n].detach().clone()) for n in self.selection.names[name]]

    @property
    def extra_bytes(self) -> int:
        n = sum(o.numel() * o.element_size() for pairs in self.saved.values() for _, o in pairs)
        return n + sum(p.numel() * p.element_size() for m in self.copies.values() for p in m.parameters())

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        m = self.models
        swapped: dict[str, nn.Module] = {}
        if self.depth:
            with torch.no_grad():
                self.depth += 1
                try:
                    yield
                finally:
                    self.depth -= 1
            return
        with torch.no_grad(), contextlib.ExitStack() as stack:
            self.depth += 1
            stack.callback(self._leave)
            for name, kind in self.selection.kinds.items():
                module = getattr(m, name)
                if kind == "lora":
                    enable_lora(module, False)
                    stack.callback(enable_lora, module, True)
                elif kind == "partial":
                    self._swap(name)
                    stack.callback(self._swap, name)
                else:
                    swapped[name] = module
                    setattr(m, name, self.copies[name])
            try:
                yield
            finally:
                for name, module in swapped.items():
                    setattr(m, name, module)

    def _leave(self) -> None:
        self.depth -= 1

    def _swap(self, name: str) -> None:
        sharded = False
        for p, orig in self.saved[name]:
            if isinstance(p, DTensor):  # FSDP2 reads its own storage: exchange the values in place
                mine, theirs = p.to_local(), orig.to_local()
                held = mine.clone()
                mine.copy_(theirs)
                theirs.copy_(held)
                sharded = True
            else:
                p.data, orig.data = orig.data, p.data  # swap storages, no copy
        if sharded:  # the next forward gathers the swapped values, not a copy FSDP2 kept gathered
            reshard(getattr(self.models, name))
