"""Data sets: canonical tables, MovieLens loaders, synthetic data and splits."""
