"""Benchmarks: throughput (``python -m benchmarks.speed``) and the SAEBench harness (``python -m benchmarks run``,
package :mod:`benchmarks.saebench`)."""
