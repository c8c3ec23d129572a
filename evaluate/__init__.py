"""Evaluation stage: protocols, metrics, attention maps and the comparison table."""
