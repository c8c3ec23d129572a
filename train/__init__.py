"""Training stage: the recurrent attention models and the service that trains them from a store."""

if __name__ != "glimpse.train":  # the bare folder name would load a second copy of every module
    raise ImportError("train/ is the package glimpse.train: import it by that name (see ARCHITECTURE.md)")
