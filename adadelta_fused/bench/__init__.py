"""The bandwidth benchmark: ``python -m adadelta_fused.bench`` (see ``__main__`` for the flags).

One concept per module: ``traffic`` the byte and launch model, ``bandwidth`` the copy/triad probes,
``timing`` how a step is timed, ``cases`` the sweep and its data, ``implementations`` what is timed,
``sweep`` the run, ``report`` the table, files and plot, ``environment`` the hardware and versions.
"""
