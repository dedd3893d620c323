"""Ray Train jobs: one function per model, config → data → model → loop → eval → log."""
