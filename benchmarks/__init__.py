"""The scripts that produce the figures of docs/BENCHMARKS.md (not installed; run from the
repository root as `python -m benchmarks.NAME` or through the Makefile)."""
