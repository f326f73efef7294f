"""Every number ablate measures, in one package.

* :mod:`.model` — the model a YAML builds and what is read off it: layer table (channels, strides),
  parameters, the strides of a placement's layers, the architecture key;
* :mod:`.cost` — exact costs of one architecture: parameters a placement added, FLOPs;
* :mod:`.phase` — latency: the measurement phase that times every architecture side by side
  (``python -m ablate.measure``), with the load it checks first (:mod:`.quiet`), the timer and backends
  (:mod:`.latency`), ONNX export (:mod:`.export`) and its stored results (:mod:`.store`, read by the tables
  without torch);
* :mod:`.device` — device strings (``0,1``, ``cuda:0``, ``cpu``) read for checks, torch and DDP.

COCO AP by object size is :mod:`ablate.evaluation`'s (to move here); mAP is ultralytics' validation
(:mod:`ablate.train`).
"""
