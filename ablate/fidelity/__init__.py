"""How far a quick verdict holds: the fidelity study of the quick protocol against a longer reference.

``python -m ablate.fidelity`` / ``make fidelity`` runs a set of comparisons (``conf/fidelity/default.yaml``:
the demo's modules at ``neck``, the null control and positive controls) under two protocols (``train=quick``
and ``train=reference``) over seeds, as ordinary sweeps, then compares the protocols' paired Δs.

* :mod:`.study`: the comparisons, the sweeps that train them, reading every run back by its key;
* :mod:`.agreement`: pure statistics over the per-seed pairs (Δ with CI, Kendall τ with a bootstrap CI
  over seeds, sign agreement, flips by |Δ|, how far a quick Δ kept its sign, control verdicts);
* :mod:`.figure`: quick Δ against reference Δ with CI bars and the diagonal;
* ``__main__``: the command line, the terminal summary and ``<results>/fidelity/``.
"""
