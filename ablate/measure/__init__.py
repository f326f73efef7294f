"""Measurement: exact costs of one architecture (:mod:`.cost`), the latency primitives (:mod:`.latency`),
ONNX export (:mod:`.export`), the measurement phase that times every architecture side by side
(:mod:`.phase`, ``python -m ablate.measure``), the load it checks first (:mod:`.quiet`) and its stored
results (:mod:`.store`, read by the tables without torch)."""
