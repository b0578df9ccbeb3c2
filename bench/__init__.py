"""Benchmarks: ``python -m bench [signaling|media|redis|all]`` (see BENCHMARKS.md)."""
