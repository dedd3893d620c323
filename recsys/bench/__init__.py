"""`make bench`: the offline pipeline, training scaling, quality and serving latency, measured on this machine.

Everything runs against real processes on 127.0.0.1 in a throwaway home (`<home>/bench`), bounded in count
and time. Results: `bench/results/<date>-<host>.json` (with the machine and the pinned stack) and
`BENCHMARKS.md`. Absolute times drift on a shared machine, so ratios are measured inside one run.
"""
