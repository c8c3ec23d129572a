"""Evaluation stage: metrics, localisation and attention figures of trained runs, and the table's rows."""

if __name__ != "glimpse.evaluate":  # the bare folder name would load a second copy of every module
    raise ImportError("evaluate/ is the package glimpse.evaluate: import it by that name (see ARCHITECTURE.md)")
