"""Benchmarks: latency against the physical limit, throughput and memory against the original bot's flow."""
