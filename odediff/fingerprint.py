"""A content fingerprint of a model, so that a latent knows which model encoded it.

The fingerprint is a hash of everything the model's ε could depend on, found by walking the
model's attributes: the schedule, every tensor (by shape, dtype, Σx and ‖x‖ in float64), every
``nn.Module``'s parameters and buffers, plain numbers and strings, and for plain functions and
lambdas their code, defaults and closure (a lambda wrapping a UNet is fingerprinted by the
UNet's weights). It is cheap (two reductions per tensor, one transfer per device) and stable
across processes; sums are rounded to 9 significant digits so that moving a model to another
device, whose reductions round differently, keeps its fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["fingerprint"]

_DEPTH = 12


def fingerprint(model: object) -> str:
    """A 16-hex-digit digest of the model's content (module docstring)."""
    parts: list[str] = []
    tensors: list[Tensor] = []
    _walk(model, parts, tensors, set(), 0)
    digest = hashlib.sha256("\x1f".join(parts).encode())
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    for device in sorted(by_device, key=str):
        with torch.no_grad():
            sums = torch.stack(
                [
                    s
                    for t in by_device[device]
                    for s in (
                        t.detach().sum(dtype=torch.float64),
                        torch.linalg.vector_norm(t.detach(), dtype=torch.float64),
                    )
                ]
            )
        digest.update(" ".join(f"{v:.9e}" for v in sums.cpu().tolist()).encode())
    return digest.hexdigest()[:16]


def _walk(obj: Any, parts: list[str], tensors: list[Tensor], seen: set[int], depth: int) -> None:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype)):
        parts.append(repr(obj))
        return
    if id(obj) in seen or depth > _DEPTH:
        parts.append("<seen>")
        return
    seen.add(id(obj))
    down = functools.partial(_walk, parts=parts, tensors=tensors, seen=seen, depth=depth + 1)
    if isinstance(obj, Tensor):
        parts.append(f"T{tuple(obj.shape)}{obj.dtype}")
        if obj.is_floating_point() or obj.is_complex():
            tensors.append(obj)
        else:
            tensors.append(obj.to(torch.float64))
        return
    if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
        parts.append(getattr(obj, "__qualname__", getattr(obj, "__name__", "?")))
        return
    parts.append(type(obj).__qualname__)
    if isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            parts.append(name)
            down(t)
        return
    if isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            parts.append(repr(k))
            down(obj[k])
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj:
            down(v)
        return
    if isinstance(obj, types.MethodType):
        down(obj.__func__)
        down(obj.__self__)
        return
    if isinstance(obj, types.FunctionType):
        parts.append(f"{obj.__module__}.{obj.__qualname__}:{_code(obj.__code__)}")
        down(obj.__defaults__)
        down(obj.__kwdefaults__)
        for cell in obj.__closure__ or ():
            down(cell.cell_contents)
        return
    if isinstance(obj, functools.partial):
        down(obj.func)
        down(obj.args)
        down(obj.keywords)
        return
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            parts.append(f.name)
            down(getattr(obj, f.name))
        return
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        down(state)


def _code(code: types.CodeType) -> str:
    """Bytecode and constants; nested code objects by content (their repr holds an address)."""
    consts = (_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return code.co_code.hex() + "|" + "|".join(consts)
