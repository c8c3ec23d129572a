"""Benchmarks: each bench/bench_*.py exposes ``run(quick: bool = False) -> str`` (a markdown section)."""
