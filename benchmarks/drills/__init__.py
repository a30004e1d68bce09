"""Failure drills and soaks against real tritonservers (one module per drill)."""
