"""Benchmarks and evaluation scripts (each runs as `python benchmarks/<name>.py`).

This file makes `benchmarks` a regular package, so `--cell=benchmarks.mgu:MGU` finds this
folder even though PyPI's pysbd wheel installs an unrelated top-level `benchmarks` package.
"""
