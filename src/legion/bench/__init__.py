"""Benchmark scenarios behind ``legion bench``: each measures legion next to a baseline
in the same run and returns a `legion.bench.results.BenchResult` (JSON data,
markdown tables, plots) that `legion.bench.results.write_result` writes out.

- `legion.bench.overhead`: no-op agents through the durable path vs bare gather;
- `legion.bench.capacity`: achieved share of an RPM / TPM limit vs a fixed-
  concurrency client;
- `legion.bench.concurrency`: 10,000 instances in flight in one process;
- `legion.bench.scale_out`: 1 vs 2 worker processes on PostgreSQL;
- `legion.demo.sequential` (with the demo it measures): the demo's sequential vs
  scaled comparison over N.

`legion.bench.results` is the one measurement module (meters, progress, number
formats, quantiles, the machine's description) that `legion.demo` uses too.
"""
