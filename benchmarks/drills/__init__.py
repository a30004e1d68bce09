"""Failure drills: break one thing on a real tritonserver under load and measure what clients see.

Each drill is a module with a `main()` (`python -m aisle.benchmarks.drills.<name> --help`) and a
function the tests call with bounded sizes.
"""
