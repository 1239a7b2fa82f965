"""Objectives: pure functions of per-token or per-sequence tensors, one module per family.

Nothing here iterates over the vocabulary, calls a model or does I/O.
"""
