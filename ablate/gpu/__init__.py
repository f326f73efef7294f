"""The GPU path, checked on a real accelerator in one call: ``python -m ablate.gpu_check``.

* :mod:`ablate.gpu.plan`: what runs (steps, their checks and time limits, the training commands, the
  latency settings), built without a GPU and printed by ``--list``;
* :mod:`ablate.gpu.precision`: each module's forward under autocast fp16 / bf16 against fp32 with the
  same weights, and the per-module bounds;
* :mod:`ablate.gpu.steps`: the steps themselves, each run in a child process with its own time limit;
* :mod:`ablate.gpu.wheels`: the wheels a machine without ultralytics or Hydra needs, and the command line.
"""
