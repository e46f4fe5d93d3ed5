"""The paper's study: the synthetic corpus, training runs, analysis against validation loss, the demo and
the per-token report. Imports ``core`` and ``integrations``."""
