"""pytest_specdec: benchmark suites of speculative decoding as regression-gated pytest cases."""
