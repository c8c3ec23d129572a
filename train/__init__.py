"""Training stage: the recurrent attention models and the service that trains them from a store."""
