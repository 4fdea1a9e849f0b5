"""The pieces of ``microkernel bench``: a measuring harness, image making, the benchmarks.

Split from ``clients/bench.py`` (the command and its report) so that each
benchmark stays a short function over a shared harness, and so that tests can
run the same machinery on a tiny configuration.
"""
