"""Measurements: pure functions on arrays and tensors."""
