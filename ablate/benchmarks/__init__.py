"""Benchmarks and measurements that print figures (run as ``python -m ablate.benchmarks.<name>``)."""
