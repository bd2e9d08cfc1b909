"""``python -m ivl_ros.bench``: speed of each backend on one GPU (or CPU), in one run, with a report.

See :mod:`ivl_ros.bench.command` for the options and :mod:`ivl_ros.bench.suite` for what is measured.
"""
