"""Response cache: exact and semantic layers, vector index, field guard, ablation."""
