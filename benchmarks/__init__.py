"""``python -m benchmarks``: speed of each backend on one GPU (or CPU), in one run, with a report.

See :mod:`benchmarks.command` for the options and :mod:`benchmarks.suite` for what is measured.
"""
