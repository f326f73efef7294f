"""Model families: which family a model name or a checkpoint belongs to, and which Detect head ablate runs.

ablate supports the ultralytics families in :data:`FAMILIES` (``conf/model/_<family>.yaml``). They differ
in one way that reaches past composition: YOLO26's ``Detect`` is end-to-end (its YAML says ``end2end:
True``). It holds two heads: the one-to-many head of YOLOv8/11/12 (thousands of boxes that need NMS) and a
one-to-one head, trained to give one box per object, whose output is final (``B × 300 × 6``, the top-k
scores; no NMS). Training fits both (``E2ELoss``, shifting its weight to the one-to-one head over the
epochs). The pinned ultralytics picks the head per call with its ``nms`` argument: ``None`` (its default)
the one-to-many head followed by NMS, as for the other families; ``False`` the one-to-one head, whose
output its ``non_max_suppression`` only filters by confidence and ``max_det``.

ablate runs every end-to-end model on its one-to-one head, the head YOLO26 is designed and documented
around, everywhere a head is chosen: ultralytics' validation during and after training and the
predictions of the AP-by-size evaluation (:func:`head_args`: ``nms=False``), the latency phase's model
(:func:`select_head`) and its exports (:func:`export_args`). So NMS is never run on the one-to-one
output, and never left out for the others. The timed forward holds no NMS in any family
(:func:`latency_note`): YOLOv8/11/12's raw outputs still need it after the timed pass, YOLO26's final
output (its top-k selection is timed) needs none.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays unimported here: the report (make table) uses this module
    from torch import nn

FAMILIES = ("yolov8", "yolo11", "yolo12", "yolo26")
END_TO_END = frozenset({"yolo26"})  # families whose YAML says end2end: True (tested against ultralytics')
SCALES = "nsmlx"
_INSERTED = "AttentionResidual"  # the row insert mode adds (modules.residual)


def family_of(model: str) -> str:
    """The family of a model name: ``yolo26n`` -> ``yolo26`` (another name without its scale letter)."""
    name = str(model).removesuffix(".yaml").removesuffix(".pt")
    for family in sorted(FAMILIES, key=len, reverse=True):
        if name == family or (name.startswith(family) and name[len(family) :] in tuple(SCALES)):
            return family
    return name[:-1] if len(name) > 1 and name[-1] in SCALES and name[-2].isdigit() else name


def _head(model: Any) -> Any:
    """The last layer of a model's layer list (``DetectionModel.model``), or None."""
    layers = getattr(model, "model", None)
    try:
        return layers[-1] if layers is not None and len(layers) else None
    except TypeError:  # no layer list
        return None


def end_to_end(obj: Any) -> bool:
    """Whether ``obj`` has an end-to-end (one-to-one, NMS-free) Detect head.

    ``obj``: a model YAML dict (its ``end2end`` key), a built model (its Detect holds a one-to-one branch),
    or a model or family name (:data:`END_TO_END`; False for a family ablate does not know).
    """
    if isinstance(obj, Mapping):
        return bool(obj.get("end2end"))
    if isinstance(obj, str):
        return family_of(obj) in END_TO_END
    head = _head(obj)
    if head is None:
        raise TypeError(f"end_to_end: a model YAML dict, a model or a model name, not {type(obj).__name__}")
    return getattr(head, "one2one_cv2", None) is not None


def head_args(obj: Any) -> dict[str, Any]:
    """ultralytics ``train`` / ``val`` / ``predict`` arguments that select the head ablate runs:
    ``{"nms": False}`` (the one-to-one head, no NMS) for an end-to-end model, else none."""
    return {"nms": False} if end_to_end(obj) else {}


def select_head(model: nn.Module) -> nn.Module:
    """Select the one-to-one head of an end-to-end model for its eval-mode forward (in place; returned).

    Its eval forward then returns the final ``B × max_det × 6`` detections, and ``fuse()`` drops the
    one-to-many branch, as in deployment. Training is unchanged (both heads train); other models are
    returned untouched.
    """
    if end_to_end(model):
        model.end2end = True
    return model


def export_args(model: nn.Module) -> dict[str, Any]:
    """ultralytics exporter arguments that export the head ``model`` has selected, without embedded NMS:
    ``nms=False`` keeps an end-to-end model's one-to-one head (the exporter's default, ``None``, would
    switch it to the one-to-many head)."""
    return {"nms": False if getattr(model, "end2end", False) else None}


def timed_forward(family: str) -> str:
    """What the latency phase times for ``family``: one phrase for the table's footnote."""
    if end_to_end(family):
        return f"{family}: its end-to-end one-to-one head, top-k selection included, needs no NMS"
    return f"{family}: raw head outputs, the NMS they need is not timed"


def latency_note(families: Iterable[str]) -> str:
    """The footnote sentence on NMS for the families of a table ("" when there are none)."""
    names = sorted({str(f) for f in families if f and str(f) != "nan"})
    if not names:
        return ""
    return "Latency excludes NMS (" + "; ".join(timed_forward(f) for f in names) + ")."


# ---------------------------------------------------------------------------------------- checkpoints


@functools.cache
def _family_yaml(family: str) -> dict[str, Any]:
    from ultralytics.nn.tasks import yaml_model_load

    return yaml_model_load(f"{family}n.yaml")


def _module_name(row: Any) -> str:
    return str(row[2]).split(".")[-1]


def signature(d: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """A model YAML's base layer sequence (module names; rows insert mode added left out, replace-mode
    hosts read as the block they replace) and whether its head is end-to-end."""
    from modules.hosts import HOSTS

    hosts = {name: cls.__mro__[1].__name__ for name, cls in HOSTS.items()}
    names = [_module_name(r) for r in [*d.get("backbone", []), *d.get("head", [])]]
    return tuple(hosts.get(n, n) for n in names if n != _INSERTED), bool(d.get("end2end"))


@functools.cache
def _signatures() -> dict[tuple[tuple[str, ...], bool], str]:
    return {signature(_family_yaml(f)): f for f in FAMILIES}


def family_of_yaml(d: Mapping[str, Any] | None) -> str | None:
    """The family of a model YAML dict (a checkpoint's, a composed model's), by its layer sequence and
    head; else by the YAML file name it was read from; None when neither tells."""
    if not d:
        return None
    found = _signatures().get(signature(d))
    if found:
        return found
    stem = re.sub(r"\.ya?ml$", "", str(d.get("yaml_file") or "")).split("/")[-1]
    family = family_of(stem) if stem else ""
    return family if family in FAMILIES else None


def family_mismatch(ckpt_yaml: Mapping[str, Any] | None, base_yaml: Mapping[str, Any] | None) -> str | None:
    """``a yolo12 checkpoint, the base model is yolo26`` when both families are known and differ."""
    theirs, ours = family_of_yaml(ckpt_yaml), family_of_yaml(base_yaml)
    if theirs and ours and theirs != ours:
        return f"a {theirs} checkpoint, the base model is {ours}"
    return None
