"""Every number ablate measures, in one package.

* :mod:`.model` — the model a YAML builds and what is read off it: layer table (channels, strides),
  parameters, the strides of a placement's layers, the architecture key;
* :mod:`.cost` — exact costs of one architecture: parameters a placement added, FLOPs;
* :mod:`.phase` — latency: the measurement phase that times every architecture side by side
  (``python -m ablate.measure``), with the load it checks first (:mod:`.quiet`), the timer and backends
  (:mod:`.latency`), ONNX export (:mod:`.export`) and its stored results (:mod:`.store`, read by the tables
  without torch);
* :mod:`.coco` — COCO AP overall and by object size (pycocotools), and which checkpoint on which split a
  run's metrics are evaluated on;
* :mod:`.device` — device strings (``0,1``, ``cuda:0``, ``cpu``) read for checks, torch and DDP.

mAP50 / mAP50-95 are ultralytics' own validation, run by :mod:`ablate.train`.
"""
