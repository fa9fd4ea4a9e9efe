"""Benchmark modes of ``vla-accel bench <mode>``: each module exposes ``add_arguments(parser)`` and
``run(args) -> int`` (commands/bench.py adds the common options and dispatches).

Scheduling modes: ``pipeline`` (serial vs pipelined throughput), ``batching`` (multi-stream
micro-batching), ``memory`` (static / pool / dynamic buffers: allocations and jitter) and
``realtime`` (latency under a paced input, growth over a run, fixed rates, peak rate); shared
helpers live in ``common``. Importing this package imports nothing heavy.
"""
