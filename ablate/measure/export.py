"""ONNX export at static shapes, ONNX Runtime sessions on the CPU, and a torch-vs-ORT parity check."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import numpy as np
import torch
from torch import nn

from ..families import export_args

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

TINY = 1e-12  # floor of the denominator of the relative error (an all-zero output)


def _hw(imgsz: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return int(h), int(w)


def _is_detection_model(model: nn.Module) -> bool:
    from ultralytics.nn.tasks import DetectionModel

    return isinstance(model, DetectionModel)


def _in_channels(model: nn.Module) -> int:
    """Input channels of a plain BCHW module: its ``channels`` attribute, else its first conv's."""
    channels = getattr(model, "channels", None)
    if isinstance(channels, int):
        return channels
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"cannot tell the input channels of {type(model).__name__}; pass channels=")
    return conv.in_channels


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """Silence ultralytics' INFO chatter and forbid its pip auto-install (restored on exit)."""
    from ultralytics.utils import LOGGER, checks

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        with mock.patch.object(checks, "AUTOINSTALL", False):
            yield
    finally:
        LOGGER.setLevel(level)


def _ultralytics_export(model: nn.Module, args: dict, path: Path) -> None:
    """Run ultralytics' exporter with ``args`` on a deep copy of ``model``; move its output to ``path``.

    The exporter names its output after ``pt_path`` (else after the YAML file, in the working
    directory), so the copy's points into a temporary folder next to ``path``; the copy also gets the
    ``task`` that ``YOLO()`` would set (the exporter reads it; a bare DetectionModel has none).
    """
    from ultralytics.engine.exporter import Exporter
    from ultralytics.nn.tasks import guess_model_task

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        target = copy.deepcopy(model)
        target.pt_path = str(Path(tmp) / "model.pt")
        target.task = getattr(target, "task", None) or guess_model_task(target)
        with _quiet_ultralytics():
            out = Exporter(overrides=args)(target)
        os.replace(out, path)


def _export_ultralytics(model: nn.Module, hw: tuple[int, int], path: Path, batch: int) -> None:
    """ultralytics' own ONNX export (fused, Detect in export mode), written to ``path``."""
    import onnx  # noqa: F401  (fail here, before ultralytics would try to install it)

    stride = int(max(model.stride))
    if hw[0] % stride or hw[1] % stride:
        raise ValueError(f"image size {hw} is not a multiple of the model's stride {stride}")
    args = {"format": "onnx", "imgsz": list(hw), "batch": batch, "device": "cpu", "simplify": False}
    args |= {"dynamic": False, "nms": None, "quantize": None, "verbose": False}
    args |= export_args(model)  # the head the model selected (an end-to-end one stays end-to-end)
    _ultralytics_export(model, args, path)


def _export_module(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """torch's TorchScript-based exporter at ultralytics' opset, on an eval copy of ``model``."""
    import onnx
    from ultralytics.utils.export.engine import best_onnx_opset

    module = copy.deepcopy(model).float().eval()  # tracing fills caches (RALA's RoPE tables): a copy
    with torch.no_grad():
        torch.onnx.export(
            module,
            (x,),
            str(path),
            opset_version=best_onnx_opset(onnx),
            input_names=["images"],
            output_names=["output0"],
            dynamo=False,
        )


def export_onnx(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    path: Path,
    batch: int = 1,
    *,
    channels: int | None = None,
) -> Path:
    """Export ``model`` to ONNX at a fixed input size (static shapes), on the CPU, in float32.

    An ultralytics ``DetectionModel`` goes through ultralytics' own exporter (fused, Detect in export
    mode, no simplification, no embedded NMS); any other BCHW module through
    ``torch.onnx.export(..., dynamo=False)`` at the opset ultralytics would choose. The caller's model
    is not modified (both paths export a deep copy).

    Args:
        model: a composed ``DetectionModel`` or any module mapping B×C×H×W to tensors.
        imgsz: input height and width (one int for a square); multiples of the stride for a detector.
        path: the ONNX file to write (parent folders are created).
        batch: the fixed batch size.
        channels: input channels of a plain module. Default: its ``channels`` attribute or first conv.

    Returns:
        ``path``.
    """
    hw, path = _hw(imgsz), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _is_detection_model(model):
        _export_ultralytics(model, hw, path, batch)
    else:
        x = torch.zeros(batch, channels or _in_channels(model), *hw)
        _export_module(model, x, path)
    log.info("exported %s at batch %d, %d×%d to %s", type(model).__name__, batch, *hw, path)
    return path


def onnx_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for ``path`` on the CPU execution provider, run sequentially.

    Args:
        path: the ONNX file.
        threads: intra-op threads (> 0). Default: ONNX Runtime's choice. Inter-op threads are 1.
    """
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_parity(model: nn.Module, x: torch.Tensor, path: Path) -> float:
    """Export ``model`` at the shape of ``x`` and compare torch with ONNX Runtime on ``x``.

    torch runs an eval copy of the model without gradients; for a model returning a tuple or list
    (a ``DetectionModel`` in eval mode) its first element is compared with ORT's first output. The
    result is the maximum relative error ``max|a - b| / max(max|a|, 1e-12)``, with ``a`` the torch
    output and ``b`` ORT's, both in float64: the worst absolute difference in units of the output's
    largest magnitude. For a model on its end-to-end head (``model.end2end``: ranked detections) the
    detections are compared as sets (:func:`unordered_diff`).

    Args:
        model: as for :func:`export_onnx`.
        x: the B×C×H×W float input (its shape fixes the exported shapes).
        path: where the ONNX file is written.
    """
    x = x.detach().float().cpu()
    export_onnx(model, tuple(x.shape[-2:]), path, batch=x.shape[0], channels=x.shape[1])
    with torch.no_grad():
        out = copy.deepcopy(model).float().eval()(x)
    a = (out[0] if isinstance(out, tuple | list) else out).double().numpy()
    session = onnx_session(path)
    b = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"torch output {a.shape} and ONNX Runtime output {b.shape} differ in shape")
    diff = unordered_diff(a, b) if getattr(model, "end2end", False) else np.abs(a - b).max()
    err = float(diff / max(float(np.abs(a).max()), TINY))
    log.info("ONNX parity of %s at %s: max relative error %.3g", type(model).__name__, tuple(x.shape), err)
    return err


def unordered_diff(a: np.ndarray, b: np.ndarray, tie: float = 1e-3) -> float:
    """The largest absolute difference between two batches of ranked detections (B × K × 6 rows:
    box, score, class) compared as sets.

    An end-to-end head (:mod:`ablate.families`) outputs its top-K detections ranked by score: two whose
    scores agree to float rounding come out in either order, and at the K-th score either may make the
    cut. So each row is compared with its nearest row of the other batch element (max-abs over the row),
    both ways, except rows scored within ``tie`` (relative) of the cut-off, which need no partner; the
    sorted scores are compared as well. A wrong box, score or class still shows.
    """
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        d = np.abs(x[:, None, :] - y[None, :, :]).max(-1)  # K × K: row of a vs row of b
        cut = max(float(x[:, 4].min(initial=np.inf)), float(y[:, 4].min(initial=np.inf)))
        free_x, free_y = x[:, 4] <= cut + tie * abs(cut), y[:, 4] <= cut + tie * abs(cut)
        scores = np.abs(np.sort(x[:, 4]) - np.sort(y[:, 4])).max(initial=0.0)
        worst = max(
            worst, float(d.min(1)[~free_x].max(initial=0.0)), float(d.min(0)[~free_y].max(initial=0.0))
        )
        worst = max(worst, float(scores))
    return worst


def export_engine(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    path: Path,
    batch: int = 1,
    half: bool = True,
    device: str = "cuda:0",
) -> Path:
    """A TensorRT engine of a composed ``DetectionModel`` built by ultralytics' exporter (``format=engine``,
    static shapes), written to ``path`` and reused when present (needs CUDA and ``tensorrt``).

    Args:
        model: the composed detector.
        imgsz: input height and width (multiples of the stride).
        path: the engine file.
        batch: the fixed batch size.
        half: build an FP16 engine.
        device: the CUDA device (``cuda:N``).
    """
    hw, path = _hw(imgsz), Path(path)
    if path.is_file():
        return path
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    args = {"format": "engine", "imgsz": list(hw), "batch": batch, "half": half, "simplify": False}
    args |= {"dynamic": False, "nms": None, "verbose": False, "device": device.removeprefix("cuda:")}
    args |= export_args(model)  # the head the model selected (an end-to-end one stays end-to-end)
    _ultralytics_export(model, args, path)
    return path
