"""Measurement: exact costs of one architecture (:mod:`.cost`), the latency primitives (:mod:`.latency`),
ONNX export (:mod:`.export`) and the measurement phase that times every architecture side by side
(:mod:`.phase`, ``python -m ablate.measure``)."""
