"""Pretrained weights into a composed model: every tensor of the base checkpoint where its layer now lives.

ultralytics' own ``load`` matches tensors by name and shape. An inserted layer shifts every later index,
so most names stop matching (and an equal-shaped tensor at a shifted index could land in the wrong layer).
Here the mapping comes from the composition: :func:`ablate.compose.base_indices` says which composed
index each base layer became; in replace mode the host block keeps its own tensors and the attention's
tensors follow into the swapped-in module when it holds a module of the original attention's class
(``area`` wraps ultralytics' ``AAttn``: all of them). Detect's class-dependent tensors are skipped when
the number of classes differs, as ultralytics does. Every skipped tensor is reported with its reason; a
tensor that cannot be placed (not in the base model, another shape) is an error unless not strict.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modules.hosts import HOSTS

from .compose import base_indices, marks
from .errors import AblateError
from .families import family_mismatch

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^model\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a base-model checkpoint (names as in ``DetectionModel.state_dict()``)."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    nc: int | None = None
    yaml: dict[str, Any] | None = None  # the model YAML a checkpointed DetectionModel carries


@dataclass
class Transfer:
    """Where the checkpoint's tensors went: ``state`` (composed names) and what was skipped, and why."""

    checkpoint: Checkpoint
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, reason)

    @property
    def total(self) -> int:
        return len(self.checkpoint.state)

    @property
    def transferred(self) -> int:
        return len(self.state)

    def line(self) -> str:
        """``weights: transferred N/M tensors of the base checkpoint PATH (sha256 …)[; skipped …]``."""
        ck = self.checkpoint
        text = (
            f"weights: transferred {self.transferred}/{self.total} tensors of the base checkpoint "
            f"{ck.path} (sha256 {ck.sha256[:12]})"
        )
        if self.skipped:
            reasons = Counter(reason for _, reason in self.skipped)
            text += "; skipped " + ", ".join(f"{n} ({reason})" for reason, n in reasons.items())
        return text

    def record_fields(self) -> dict[str, Any]:
        """The record's ``weights_*`` fields."""
        return {
            "weights_path": str(self.checkpoint.path),
            "weights_sha256": self.checkpoint.sha256,
            "weights_transferred": self.transferred,
            "weights_total": self.total,
            "weights_skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


def check_weights_file(value: Any) -> Path:
    """The checkpoint path of ``model.weights``: an existing readable file (AblateError otherwise)."""
    path = Path(str(value)).expanduser().resolve()
    if not path.exists():
        raise AblateError(
            f"model.weights={value!r}: no such file; give a local checkpoint (.pt) of the base model "
            "(nothing is downloaded)"
        )
    if not path.is_file():
        raise AblateError(f"model.weights={value!r} is a directory; give a checkpoint file (.pt)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise AblateError(f"model.weights={value!r} cannot be read: {e.strerror or e}") from None
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"


def safe_load_requested() -> bool:
    """Whether ``ULTRALYTICS_SAFE_LOAD`` asks for weights-only loading (ultralytics' ``env_bool``: 1, true,
    yes, on, y, t), read now rather than when ultralytics was imported."""
    return os.environ.get(SAFE_LOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def load_torch_file(path: Path) -> Any:
    """``torch.load`` of a checkpoint as ultralytics loads one: ``weights_only=False`` by default; under
    ``ULTRALYTICS_SAFE_LOAD=1`` ``weights_only=True`` against ultralytics' allow-list (the globals the file
    references among its known classes, as its ``torch_safe_load`` registers them) plus our module classes.

    Raises ``pickle.UnpicklingError`` for a file that needs unsafe loading under the flag.
    """
    import modules  # (a checkpoint may pickle our classes; importing registers them as safe globals)

    if not safe_load_requested():
        return torch.load(path, map_location="cpu", weights_only=False)
    modules.register_safe_globals()
    from ultralytics.nn import tasks

    safe = getattr(tasks, "_SafeLoad", None)
    if safe is None or not safe.SUPPORTED:  # ultralytics without restricted loading: torch's allow-list only
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe.loading(path):
        return torch.load(path, map_location="cpu", weights_only=True)


def _unsafe_globals(path: Path) -> str:
    """The globals of ``path`` outside the weights-only allow-list, for a message (a few, then a count)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f" ({shown})" if names else ""


def read_checkpoint(path: Path) -> Checkpoint:
    """Read an ultralytics checkpoint (``{"model"|"ema": DetectionModel}``) or a base-model state dict.

    Loaded as ultralytics loads it (:func:`load_torch_file`; ``ULTRALYTICS_SAFE_LOAD=1``: weights only);
    of ``ema`` and ``model``, ``ema`` wins when it holds something, as in ultralytics' ``load_checkpoint``.
    """
    path = check_weights_file(path)
    try:
        obj = load_torch_file(path)
    except pickle.UnpicklingError as e:
        if not safe_load_requested():
            raise AblateError(
                f"model.weights={str(path)!r} is not a checkpoint torch can read: {_one_line(e)}"
            ) from None
        raise AblateError(
            f"model.weights={str(path)!r} needs unsafe loading: it pickles objects outside the weights-only "
            f"allow-list{_unsafe_globals(path)}, which {SAFE_LOAD_ENV}=1 refuses; unset {SAFE_LOAD_ENV} to "
            "load it with weights_only=False if you trust the file, or give a checkpoint of tensors and "
            "ultralytics/ablate modules"
        ) from None
    except Exception as e:
        raise AblateError(
            f"model.weights={str(path)!r} is not a checkpoint torch can read: {_one_line(e)}"
        ) from None
    model = _model_of(obj)
    yaml = None
    if model is not None:
        state = dict(model.state_dict())
        yaml = getattr(model, "yaml", None) if isinstance(getattr(model, "yaml", None), dict) else None
    else:
        state = _state_dict_of(obj)
    if not state:
        kind = type(obj).__name__
        raise AblateError(
            f"model.weights={str(path)!r} holds no model tensors ({kind}); valid: an ultralytics checkpoint "
            "({'model': DetectionModel}) or a state dict of the base model"
        )
    if not any(_LAYER.match(k) for k in state):  # model.model.state_dict(): '0.conv.weight', ...
        state = {f"model.{k}": v for k, v in state.items()}
    nc = yaml.get("nc") if yaml else None
    return Checkpoint(path, file_sha256(path), state, int(nc) if nc else None, yaml)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _preferred(obj: dict[str, Any]) -> Any:
    """``obj["ema"] or obj["model"]``, as ultralytics' ``load_checkpoint`` picks (ultralytics' own final
    checkpoints hold the EMA weights in ``model`` and None in ``ema``)."""
    ema = obj.get("ema")
    return ema if ema is not None and not (isinstance(ema, dict) and not ema) else obj.get("model")


def _model_of(obj: Any) -> nn.Module | None:
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(_preferred(obj), nn.Module):
        return _preferred(obj)
    return None


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for inner in (_preferred(obj), obj.get("state_dict")):
            if isinstance(inner, dict) and inner:
                return _state_dict_of(inner)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    return {}


def plan_transfer(
    ckpt: Checkpoint,
    base: nn.Module,
    composed_yaml: dict[str, Any],
    composed: nn.Module,
    model_name: str,
    strict: bool = True,
) -> Transfer:
    """Place every tensor of ``ckpt`` (base-model names) into ``composed``; returns what goes where.

    Args:
        ckpt: the base checkpoint.
        base: the base model built at the composed model's number of classes (names and shapes).
        composed_yaml: the composed YAML dict (its rows say which layers were inserted or replaced).
        composed: the model built from ``composed_yaml``.
        model_name: the base model's name, for messages.
        strict: raise on a tensor that cannot be placed; otherwise skip it with its reason.
    """
    index = base_indices(composed_yaml)
    replaced = {i for i, m in marks(composed_yaml).items() if m == "replaced"}
    nc = int(composed_yaml["nc"])
    ckpt_nc = ckpt.nc or _detect_nc(ckpt.state, len(base.model) - 1)
    base_state, target_state = base.state_dict(), composed.state_dict()
    transfer, unplaceable = Transfer(ckpt), []
    for name, tensor in ckpt.state.items():
        m = _LAYER.match(name)
        if m is None or name not in base_state:
            unplaceable.append((name, f"not a tensor of {model_name}"))
            continue
        j, rest = int(m.group(1)), m.group(2)
        i = index[j]
        if i in replaced:
            rest, why = _into_replaced(rest, base.model[j], composed.model[i])
            if rest is None:
                transfer.skipped.append((name, why))
                continue
        target = f"model.{i}.{rest}"
        want = target_state.get(target)
        if want is None:
            unplaceable.append((name, f"no {target} in the composed model"))
        elif tuple(tensor.shape) == tuple(want.shape):
            transfer.state[target] = tensor.detach().to(want.dtype).clone()
        elif j == len(base.model) - 1 and ckpt_nc is not None and ckpt_nc != nc:
            transfer.skipped.append((name, f"Detect class-dependent, nc {ckpt_nc} -> {nc}"))
        else:
            got, exp = tuple(tensor.shape), tuple(want.shape)
            unplaceable.append((name, f"shape {got} in the checkpoint, {exp} in {model_name}"))
    if unplaceable and strict:
        name, reason = unplaceable[0]
        raise AblateError(
            f"model.weights={str(ckpt.path)!r}: {len(unplaceable)} tensor(s) cannot be placed in "
            f"{model_name}, "
            f"e.g. {name}: {reason}{_hint(ckpt, base)}; give a checkpoint of the base model {model_name} "
            "or set model.weights_strict=false to skip them"
        )
    transfer.skipped += unplaceable
    return transfer


def _hint(ckpt: Checkpoint, base: nn.Module) -> str:
    """What the checkpoint's own YAML says about it: another layer sequence (family) or another scale."""
    if not ckpt.yaml:
        return ""
    named = family_mismatch(ckpt.yaml, getattr(base, "yaml", None))  # "a yolo12 checkpoint, the base ..."
    theirs = [
        str(r[2]).split(".")[-1]
        for r in list(ckpt.yaml.get("backbone", [])) + list(ckpt.yaml.get("head", []))
    ]
    ours = [type(m).__name__ for m in base.model]
    if theirs != ours:
        k = next(
            (i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
            min(len(theirs), len(ours)),
        )
        a = theirs[k] if k < len(theirs) else "nothing"
        b = ours[k] if k < len(ours) else "nothing"
        named = f"{named}; " if named else ""
        return f" ({named}the checkpoint's layer {k} is {a}, the base model's is {b}: another model family?)"
    if named:  # the same layers, another head (yolo11 and yolo26)
        return f" ({named}: another model family)"
    scale = ckpt.yaml.get("scale")
    return f" (the checkpoint is scale {scale!r}: another scale?)" if scale else " (another scale?)"


def _detect_nc(state: dict[str, torch.Tensor], head: int) -> int | None:
    """Number of classes of a state dict: the output width of Detect's first class branch."""
    bias = state.get(f"model.{head}.cv3.0.2.bias")
    return int(bias.shape[0]) if bias is not None and bias.dim() == 1 else None


def _into_replaced(rest: str, base_layer: nn.Module, layer: nn.Module) -> tuple[str | None, str]:
    """The name inside a replaced host of a base host's tensor ``rest`` (None and why when it has none).

    The host's own parts keep their names. The original attention's tensors go into the module of the
    same class inside the swapped-in attention (``area`` holds ultralytics' ``AAttn`` as ``.attn``).
    """
    host = next(h for h in HOSTS.values() if isinstance(layer, h))
    for path in host.attention_paths(base_layer):
        if not rest.startswith(path + "."):
            continue
        original = type(base_layer.get_submodule(path))
        swapped = layer.get_submodule(path)
        sub = next((n for n, mod in swapped.named_modules() if type(mod) is original), None)
        name = getattr(type(swapped), "registry_name", type(swapped).__name__)
        if sub is None:
            return None, f"attention replaced by {name}"
        return ".".join(p for p in (path, sub, rest[len(path) + 1 :]) if p), ""
    return rest, ""


def apply_transfer(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load transferred tensors (:attr:`Transfer.state`: composed-model names) into ``model``, a model built
    from the same composed YAML; the one path by which a run's starting tensors enter its model.

    Raises AblateError when a tensor names no tensor of ``model`` or has another shape (the composition
    and the transfer plan disagree): nothing is silently left at its init.
    """
    own = model.state_dict()
    missing_targets = sorted(set(state) - set(own))
    if missing_targets:
        raise AblateError(f"weights do not fit this model: {missing_targets[0]} is not one of its tensors")
    wrong = sorted(k for k, v in state.items() if tuple(own[k].shape) != tuple(v.shape))
    if wrong:
        k = wrong[0]
        raise AblateError(
            f"weights do not fit this model: {k} has shape {tuple(state[k].shape)}, the model's "
            f"{tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=False)
    return model
