"""Offline evaluation: ranking/ranker metrics, the full-ranking protocol and reference baselines."""
