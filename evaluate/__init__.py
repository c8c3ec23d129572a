"""Evaluation stage: metrics, localisation and attention figures of trained runs, and the table's rows."""
