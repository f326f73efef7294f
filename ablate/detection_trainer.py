"""ultralytics' detection trainer with two changes a composed model needs, without editing ultralytics.

* **No weight decay where the modules ask for none.** ultralytics' ``build_optimizer`` decays every
  parameter that is not a bias or a norm weight and never reads ``no_weight_decay()``. Here every
  parameter that a module lists in its ``no_weight_decay()`` (TSSA's ``temp``, the insertion wrapper's
  layer scale ``gamma``) moves to the optimizer's no-decay weight group.
* **Pretrained weights that arrive.** When the trainer seeds its model from an initialised one
  (``get_model(weights=...)``), every tensor must arrive; a mismatch is an error, not a log line.
* **A class prior for the image size trained at.** ultralytics initialises Detect's class biases to
  ``log(5 / nc / (640 / stride)²)`` (five objects per 640 px image); at 96 px that prior is
  ``(640/96)² ≈ 44×`` too small, the class scores start near zero and short schedules from scratch
  stall on some seeds. A model trained from scratch gets the same prior at ``imgsz`` instead.

``DetectionModel``'s DDP workers receive the trainer's class by import, so this class lives in a module.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

log = logging.getLogger(__name__)

NO_DECAY_GROUP = "bn"  # ultralytics' name of its no-decay weight group (norm weights)


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that some module of ``model`` lists in ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names


def exclude_from_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """Move the :func:`no_decay_names` parameters out of decayed groups into the no-decay weight group.

    Returns the names moved. The target is ultralytics' norm-weight group (``param_group == "bn"``, weight
    decay 0, the weights' warm-up); under MuSGD, which splits it by learning rate, the one at the base rate.
    """
    params = dict(unwrap_model(model).named_parameters())
    wanted = {id(params[n]): n for n in no_decay_names(unwrap_model(model)) if n in params}
    groups = [g for g in optimizer.param_groups if g.get("param_group") == NO_DECAY_GROUP]
    if not wanted:
        return []
    if not groups:
        raise RuntimeError("the optimizer has no no-decay weight group ('bn') to move parameters into")
    target = min(groups, key=lambda g: g["lr"])
    moved = []
    for group in optimizer.param_groups:
        if group is target or not group.get("weight_decay"):
            continue
        keep = []
        for p in group["params"]:
            if id(p) in wanted:
                target["params"].append(p)
                moved.append(wanted[id(p)])
            else:
                keep.append(p)
        group["params"] = keep
    if moved:
        log.info(
            "no weight decay for %d parameter(s) the modules list: %s", len(moved), ", ".join(sorted(moved))
        )
    return sorted(moved)


def fit_class_prior(model: nn.Module, imgsz: int) -> None:
    """Detect's class biases as ultralytics sets them (five objects per image) for ``imgsz`` px images."""
    head = unwrap_model(model).model[-1]
    cls_heads = getattr(head, "cv3", None)
    if cls_heads is None or not hasattr(head, "stride"):
        return
    for branch, stride in zip(cls_heads, head.stride, strict=False):
        branch[-1].bias.data[: head.nc] = math.log(5 / head.nc / (imgsz / float(stride)) ** 2)


class AblateTrainer(DetectionTrainer):
    """``DetectionTrainer`` that honours ``no_weight_decay()``, checks that initial weights arrive and sets
    the class prior for the training image size."""

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, *args, **kwargs)
        exclude_from_decay(optimizer, model)
        return optimizer

    def get_model(self, cfg: Any = None, weights: nn.Module | None = None, verbose: bool = True) -> nn.Module:
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        if weights is not None:
            check_arrived(model, weights)
        else:
            fit_class_prior(model, int(self.args.imgsz))
        return model


def check_arrived(model: nn.Module, source: nn.Module) -> None:
    """Raise unless every tensor of ``source`` is in ``model`` with the same name and value."""
    got = model.state_dict()
    for name, tensor in source.state_dict().items():
        if (
            name not in got
            or got[name].shape != tensor.shape
            or not torch.equal(got[name].float(), tensor.float())
        ):
            raise RuntimeError(f"initial weights did not arrive in the trained model: {name} differs")
