"""Latency primitives: the interleaved timer (order, counts, time budget), timings, the torch backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ablate.compose import compose
from ablate.measure import latency
from ablate.measure.model import base_model_yaml, build_model
from ablate.placement import Placement


class Clock:
    """A fake clock (seconds) that the fake passes advance by a known number of milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def passes(self, ms: float) -> Callable[[], None]:
        def call() -> None:
            self.now += ms / 1e3

        return call


def test_rounds_rotate_the_order_and_count_every_pass() -> None:
    order: list[str] = []
    clock = Clock()
    ms = {"a": 1.0, "b": 2.0, "c": 4.0}

    def member(name: str) -> Callable[[], None]:
        step = clock.passes(ms[name])
        return lambda: (order.append(name), step())

    times = latency.time_interleaved({n: member(n) for n in "abc"}, rounds=3, passes=2, warmup=1, clock=clock)
    warm, timed = order[:3], order[3:]
    assert warm == ["a", "b", "c"]  # warm-up: one untimed pass each, interleaved
    # round r starts with member r: no member always follows the same other
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    # every timed pass is the member's own pass time, nothing of the others'; warm-up passes are not timed
    for name, rounds in times.items():
        assert rounds == [[pytest.approx(ms[name])] * 2] * 3


def test_min_time_adds_rounds_up_to_the_limit() -> None:
    clock = Clock()
    calls = {"a": clock.passes(500.0)}  # 0.5 s per pass
    assert len(latency.time_interleaved(calls, rounds=2, min_time_s=0.0, clock=clock)["a"]) == 2
    # 3 s of passes need 6 rounds of one pass; more rounds than asked, fewer than allowed
    assert (
        len(latency.time_interleaved(calls, rounds=2, min_time_s=3.0, max_rounds=10, clock=clock)["a"]) == 6
    )
    assert (
        len(latency.time_interleaved(calls, rounds=2, min_time_s=60.0, max_rounds=7, clock=clock)["a"]) == 7
    )
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
