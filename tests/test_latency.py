"""Latency primitives: the interleaved timer (order, counts, time budget), timings, the torch backend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablate.compose import Placement, base_model_yaml, build_model, compose
from ablate.measure import latency


def test_rounds_rotate_the_order_and_count_every_pass() -> None:
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abc"}
    times = latency.time_interleaved(calls, rounds=3, passes=2, warmup=1)
    warm, timed = order[:3], order[3:]
    assert warm == ["a", "b", "c"]  # warm-up: one untimed pass each, interleaved
    # round r starts with member r: no member always follows the same other
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert {n: [len(r) for r in t] for n, t in times.items()} == {n: [2, 2, 2] for n in "abc"}
    assert all(v >= 0 for t in times.values() for v in latency.flat(t))


def test_min_time_adds_rounds_up_to_the_limit() -> None:
    calls = {"a": lambda: None}
    assert len(latency.time_interleaved(calls, rounds=2, min_time_s=0.0)["a"]) == 2
    assert len(latency.time_interleaved(calls, rounds=2, min_time_s=60.0, max_rounds=7)["a"]) == 7
    with pytest.raises(ValueError, match="rounds"):
        latency.time_interleaved(calls, rounds=0)


def test_timing_is_median_and_percentiles() -> None:
    t = latency.timing([float(v) for v in range(1, 102)])  # 1 .. 101
    assert (t.median_ms, t.p10_ms, t.p90_ms, t.count) == (51.0, 11.0, 91.0, 101)
    assert latency.timing([3.0]).p90_ms == 3.0
    with pytest.raises(ValueError):
        latency.timing([])


@pytest.fixture(scope="module")
def composed() -> nn.Module:
    d = compose(base_model_yaml("yolo12n", 5), Placement("rala", (14, 17, 20)), "yolo12n")
    return build_model(d).eval()


def test_torch_backend_runs_a_fused_copy(composed: nn.Module) -> None:
    fused = latency.inference_copy(composed)
    assert fused.is_fused() and not composed.is_fused()
    x = latency.example_input(1, (64, 64))
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], composed(x)[0], rtol=1e-4, atol=1e-3)
    call = latency.torch_call(composed, (64, 64))
    call()
    assert not composed.is_fused()  # the caller's model is left as it was
    with pytest.raises(ValueError, match="half"):
        latency.torch_call(composed, (64, 64), half=True, device="cpu")


def test_example_input_is_the_same_for_everyone() -> None:
    a, b = latency.example_input(2, (32, 48)), latency.example_input(2, (32, 48))
    assert a.shape == (2, 3, 32, 48) and torch.equal(a, b) and 0 <= float(a.min()) < float(a.max()) < 1
