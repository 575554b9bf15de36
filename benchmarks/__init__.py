"""Benchmarks: throughput (speed.py); the SAEBench harness comes later."""
