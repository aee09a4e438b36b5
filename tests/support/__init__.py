"""Test support: the one deterministic fake world shared by the tests and the overhead benchmarks."""
