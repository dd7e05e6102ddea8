"""Benchmarks: ``python -m benchmarks [--quick] [--json FILE] [NAME ...]``.

Each benchmark is a module here with ``run(quick: bool) -> dict[str, float]``: it prints
its own table (ratios against a baseline measured in the same run, and the absolute
numbers) and returns its figures for ``--json``, keys prefixed with its name.
"""
