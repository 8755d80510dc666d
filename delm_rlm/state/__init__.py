"""A run's state: the store, the leased task queue and the shared context on top of it."""
