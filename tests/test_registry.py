"""Registry by name, and resolution of our class names inside ultralytics' YAML parser."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import modules


def test_available_is_sorted_and_complete() -> None:
    names = modules.available()
    assert names == sorted(names)
    assert {"rala", "halo", "tssa", "fla", "area", "mhsa"} <= set(names)


@pytest.mark.parametrize("name", modules.available())
def test_every_name_builds(name: str) -> None:
    m = modules.build(name, 64)
    assert isinstance(m, modules.get(name))
    assert m.registry_name == name
    assert m(torch.randn(1, 64, 8, 8)).shape == (1, 64, 8, 8)


def test_lookup_is_case_insensitive() -> None:
    assert modules.get("RALA") is modules.get("rala")


def test_unknown_name_lists_available() -> None:
    with pytest.raises(modules.UnknownModuleError) as err:
        modules.build("nonesuch", 64)
    message = str(err.value)
    assert "nonesuch" in message
    for name in modules.available():
        assert name in message


def test_kwargs_are_forwarded() -> None:
    assert modules.build("mhsa", 64, num_heads=4).num_heads == 4


def test_classes_resolve_in_ultralytics_namespace() -> None:
    import ultralytics.nn.tasks as tasks

    for cls in modules.registered_classes().values():
        assert getattr(tasks, cls.__name__) is cls
    assert tasks.AttentionResidual is modules.AttentionResidual


MODEL_YAML = """
nc: 3
scales:
  n: [0.50, 0.25, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 1, {row}]
  - [-1, 1, Conv, [256, 3, 2]]
head:
  - [[1, 3], 1, Detect, [nc]]
"""


def _rows() -> list[tuple[str, int]]:
    # scale n: Conv 128 -> 32 channels after width 0.25; module rows take the real channel count.
    rows = [(f"{cls.__name__}, [32]", 32) for cls in modules.registered_classes().values()]
    rows.append(("AttentionResidual, [32, rala, {num_heads: 2}]", 32))
    return rows


@pytest.mark.parametrize(("row", "channels"), _rows(), ids=lambda r: str(r).split(",")[0])
def test_model_yaml_naming_a_module_builds_through_ultralytics(
    tmp_path: Path, row: str, channels: int
) -> None:
    from ultralytics.nn.tasks import DetectionModel

    cfg = tmp_path / "tiny-n.yaml"
    cfg.write_text(MODEL_YAML.format(row=row))
    model = DetectionModel(str(cfg), ch=3, nc=3, verbose=False)
    layer = model.model[2]
    assert type(layer).__name__ == row.split(",")[0]
    out = model.model[0:3](torch.randn(1, 3, 64, 48))
    assert out.shape == (1, channels, 16, 12)


def test_yaml_resolves_in_a_fresh_process_through_import_alone(tmp_path: Path) -> None:
    """What a DDP child does: a new interpreter that only imports `modules`, then parses the YAML."""
    cfg = tmp_path / "tiny-n.yaml"
    cfg.write_text(MODEL_YAML.format(row="RALA, [32]"))
    script = textwrap.dedent(
        f"""
        import modules  # noqa: F401
        from ultralytics.nn.tasks import DetectionModel
        m = DetectionModel({str(cfg)!r}, ch=3, nc=3, verbose=False)
        print(type(m.model[2]).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "RALA"
