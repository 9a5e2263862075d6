"""Response cache: exact and semantic layers, vector index, field guard, ablation.

This ``__init__`` imports nothing: the embedder (model2vec, numpy) and the index (usearch) load only
when a semantic cache is in use, so importing the gateway core stays light (tests/test_boundaries.py).
"""
