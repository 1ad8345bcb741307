"""The command-line apps, built on the library (``invdiff.api``, ``invdiff.priors``,
``invdiff.solvers``, ``operators``, ``invdiff.data``) and never imported by it.

=====================  =====================================================================
``common``             what the apps share: :class:`~invdiff.apps.common.AppError` and the user-error
                       types, the one-paragraph message, suggestions, config groups and composition,
                       building a config node, the device choice
``jobs``               ``setup``: a composed config → a checked :class:`~invdiff.apps.jobs.Job`
``app``                the ``invdiff`` reconstruction run: one sample (``solve_item``), the run, ``rerun``
``cli``                the ``invdiff`` command line: override checks, ``--help``, Hydra entry point
``runs``               resume keys and checks, the benchmark's run hash, provenance and versions
``bench``              ``invdiff-bench``: presets, resumable runs (+ ``bench_gmm``: exact-posterior
                       problems; ``bench_tables``: summaries, tables, plots)
``train_app``          ``invdiff-train``: train a prior and export it
=====================  =====================================================================

Per-image metrics and the baseline choice are the library's :mod:`invdiff.evaluation`.
"""
