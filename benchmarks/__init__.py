"""Benchmarks of what pruning buys: prefill speed, engine overhead, scoring memory, FLOPs, scaling.

``python -m benchmarks.run [--quick] [--device cuda]`` runs them all, writes
``benchmarks/results/*.json`` and regenerates ``benchmarks/RESULTS.md``. Ratios are measured in
one process, as medians of interleaved rounds; nothing here is a timed unit test.
"""
