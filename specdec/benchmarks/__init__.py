"""Benchmarks that need more than the pytest suites: the GPU speed report (`python -m specdec.benchmarks.gpu`)."""
