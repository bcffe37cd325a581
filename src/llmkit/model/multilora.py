"""Several LoRA adapters on one base model, a different one per row of a batch.

Each linear projection of the base's blocks is wrapped once (:class:`MultiLoraLinear`); the
adapters' matrices live beside it, stacked by slot: ``a`` (slots, r, in) and ``b`` (slots, out, r)
with the adapter's scale (alpha / r, or alpha / sqrt(r) for rsLoRA) folded into ``b``. Slot 0 is
the base itself (zeros). Before a forward pass the decoder says which slot each row uses
(:meth:`AdapterSet.set_rows`); a projection then adds ``x a[row]^T b[row]^T`` to the base's
product, row by row in one batched product, so rows of different adapters decode together.
Adapters of different ranks are zero-padded to the largest (the padding adds exact zeros), and an
adapter that does not adapt a projection has zeros there.

Adapters are the standard PEFT directory (``adapter_config.json``, ``adapter_model.safetensors``),
as llmkit writes beside a LoRA run's merged model (``final/adapter``). DoRA adapters are refused
(their magnitude vector rescales the whole weight, which this per-row sum does not do).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import UsageError


@dataclass
class _Rows:
    """The slot of each row of the next forward pass (None: every row on the base)."""

    slots: Any = None


class MultiLoraLinear(torch.nn.Module):
    """A base projection plus, per row, the low-rank update of that row's adapter."""

    def __init__(self, base: Any, rows: _Rows):
        super().__init__()
        self.base, self.rows = base, rows
        self.a: Any = None  # (slots, r, in)
        self.b: Any = None  # (slots, out, r)

    def forward(self, x: Any) -> Any:
        y = self.base(x)
        slots = self.rows.slots
        if slots is None or self.a is None:
            return y
        flat = x if x.dim() == 3 else x.unsqueeze(1)
        update = torch.bmm(torch.bmm(flat, self.a[slots].transpose(1, 2)), self.b[slots].transpose(1, 2))
        return y + (update if x.dim() == 3 else update.squeeze(1)).to(y.dtype)


@dataclass
class _Adapter:
    name: str
    tag: str  # the name and when it was loaded: prefix-cache namespaces never reuse an unloaded one's KV
    weights: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # module path -> (A (r, in), B*scale (out, r))


class AdapterSet:
    """The adapters served on one base: loaded, unloaded and chosen per row."""

    def __init__(self, model: Any):
        from llmkit.model.quantize import linear_module_names

        self.model, self._rows = model, _Rows()
        leaves = set(linear_module_names(model))
        self.modules: dict[str, MultiLoraLinear] = {}
        for path, module in list(model.named_modules()):
            leaf = path.rsplit(".", 1)[-1]
            if leaf in leaves and isinstance(module, torch.nn.Linear):
                parent = model.get_submodule(path.rsplit(".", 1)[0])
                wrapped = MultiLoraLinear(module, self._rows)
                setattr(parent, leaf, wrapped)
                self.modules[path] = wrapped
        self.slots: list[_Adapter | None] = [None]  # slot 0: the base
        self._loads = 0

    # --- which adapter each row uses -------------------------------------------------------------

    def slot(self, name: str) -> int | None:
        return next((i for i, a in enumerate(self.slots) if a is not None and a.name == name), None)

    def tag(self, slot: int) -> str:
        adapter = self.slots[slot] if slot < len(self.slots) else None
        return adapter.tag if adapter is not None else ""

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.slots if a is not None]

    def set_rows(self, slots: list[int]) -> None:
        """The slot of each row of the next forward pass."""
        device = next(self.model.parameters()).device
        self._rows.slots = torch.tensor(slots, device=device) if any(slots) else None

    # --- loading -----------------------------------------------------------------------------------

    def load(self, name: str, directory: str | Path) -> int:
        """Load the PEFT adapter in ``directory`` as ``name``; its slot."""
        if self.slot(name) is not None:
            raise UsageError(f"an adapter named {name!r} is already loaded", "", "unload it first, or use another name")
        weights = self._read(Path(directory), name)
        self._loads += 1
        adapter = _Adapter(name, f"{name}@{self._loads}", weights)
        free = next((i for i, a in enumerate(self.slots) if a is None and i > 0), None)
        if free is None:
            self.slots.append(adapter)
            free = len(self.slots) - 1
        else:
            self.slots[free] = adapter
        self._stack()
        return free

    def unload(self, slot: int) -> None:
        """Free a slot (the caller makes sure no row still uses it)."""
        self.slots[slot] = None
        while len(self.slots) > 1 and self.slots[-1] is None:
            self.slots.pop()
        self._stack()

    def _read(self, directory: Path, name: str) -> dict[str, tuple[Any, Any]]:
        from safetensors.torch import load_file

        config_path = directory / "adapter_config.json"
        tensors = directory / "adapter_model.safetensors"
        if not config_path.is_file() or not tensors.is_file():
            raise UsageError(f"adapter {name!r}: no PEFT adapter in the given directory",
                             "it needs adapter_config.json and adapter_model.safetensors",
                             "give a LoRA run directory (its final/adapter) or a PEFT adapter directory")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("use_dora"):
            raise UsageError(f"adapter {name!r} is a DoRA adapter", "several adapters on one base are plain LoRA",
                             "merge it (its run's final/ is the merged model) and serve that")
        r = int(config["r"])
        scale = float(config.get("lora_alpha", r)) / (math.sqrt(r) if config.get("use_rslora") else r)
        state = load_file(str(tensors))
        out: dict[str, tuple[Any, Any]] = {}
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            path = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = state.get(key.replace(".lora_A.", ".lora_B."))
            module = self.modules.get(path)
            if module is None or b is None or a.shape[1] != module.base.in_features or b.shape[0] != module.base.out_features:
                raise UsageError(f"adapter {name!r} does not fit this base model",
                                 f"{path}: no projection of that name and shape here",
                                 "serve it on the base model it was trained on")
            out[path] = (a.float(), b.float() * scale)
        if not out:
            raise UsageError(f"adapter {name!r} holds no LoRA weights", str(tensors.name), "check the adapter directory")
        return out

    def _stack(self) -> None:
        """Rebuild every projection's stacked matrices from the loaded adapters."""
        rank = max((a.shape[0] for ad in self.slots if ad for a, _ in ad.weights.values()), default=0)
        for path, module in self.modules.items():
            if rank == 0:
                module.a = module.b = None
                continue
            weight = module.base.weight
            a = torch.zeros(len(self.slots), rank, module.base.in_features, dtype=weight.dtype, device=weight.device)
            b = torch.zeros(len(self.slots), module.base.out_features, rank, dtype=weight.dtype, device=weight.device)
            for slot, adapter in enumerate(self.slots):
                if adapter is not None and path in adapter.weights:
                    wa, wb = adapter.weights[path]
                    a[slot, : wa.shape[0]] = wa.to(a)
                    b[slot, :, : wb.shape[1]] = wb.to(b)
            module.a, module.b = a, b


def adapter_directory(path: str | Path) -> Path:
    """A PEFT adapter directory from a LoRA run (its final/adapter), a model directory with an
    adapter/ beside its weights, or the adapter directory itself."""
    p = Path(path)
    for candidate in (p / "final" / "adapter", p / "adapter", p):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise UsageError(f"no LoRA adapter at {p}", "neither it, its adapter/ nor its final/adapter/ has adapter_config.json",
                     "give a LoRA run directory, or a PEFT adapter directory")
