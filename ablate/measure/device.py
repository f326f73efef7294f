"""Device strings, read in one place.

ultralytics' spelling, as ``train.device`` and ``measure.latency.device`` take it: null or '' (auto),
``cpu``, ``mps``, ``0``, ``'0,1'``, ``[0, 1]``, ``cuda:0``, ``-1`` (the idlest GPU); ``auto`` too where a
launcher places jobs. :func:`check_device` says whether this machine has it, :func:`torch_device` names it as
torch does, :func:`is_ddp` whether training on it starts DDP workers, :func:`is_auto` whether it leaves the
choice to the launcher.
"""

from __future__ import annotations

from typing import Any

from ..errors import AblateError


def parts(value: Any) -> list[str]:
    """The device(s) ``value`` names, lower case, without ``cuda:``: ``'cuda:0, 1'`` -> ``['0', '1']``;
    ``[]`` for none (null or '')."""
    if _unset(value):
        return []
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return [p.strip() for p in text.lower().replace("cuda:", "").split(",") if p.strip()]


def _unset(value: Any) -> bool:
    return value is None or str(value).strip() == ""


def is_auto(value: Any) -> bool:
    """Whether ``value`` leaves the device to the launcher (null, '' or ``auto``)."""
    return _unset(value) or str(value).strip().lower() == "auto"


def is_ddp(value: Any) -> bool:
    """Whether ultralytics trains on several GPUs (``0,1`` or ``[0, 1]``) and so starts DDP workers."""
    return len(parts(value)) > 1


def torch_device(value: Any) -> str:
    """A device as torch names it: auto -> ``cpu``, ``0`` or ``'0,1'`` -> ``cuda:0``, ``mps`` -> ``mps``."""
    first = (parts(value) or ["cpu"])[0]
    return f"cuda:{first}" if first.isdigit() else first


def check_device(key: str, value: Any) -> None:
    """Reject a device this machine does not have (``cuda:7`` on a 1-GPU or CPU-only machine), naming the
    valid ones; ``key`` names the setting in the message. Null or '' (ultralytics chooses) is valid."""
    if _unset(value):
        return
    import torch

    names = parts(value) or ["0"]
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    n = torch.cuda.device_count()
    if names == ["cpu"] or (names == ["mps"] and mps):
        return
    names = ["0" if p == "cuda" else p for p in names]
    if n and all(p == "-1" or (p.isdigit() and int(p) < n) for p in names):
        return
    valid = [
        "cpu",
        *([f"0..{n - 1} (CUDA)" if n > 1 else "0 (CUDA)"] if n else []),
        *(["mps"] if mps else []),
    ]
    raise AblateError(f"{key}={value!r} is not available on this machine; valid: {', '.join(valid)}")
