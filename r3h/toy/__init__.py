"""The toy 3H world: a synthetic chat task where helpfulness (arithmetic), honesty
("i do not know" for questions with no answer) and harmlessness (refusing marked
harmful requests, not their look-alikes) are measured exactly (`world`), and the
tiny models trained on it, cached (`build`)."""
