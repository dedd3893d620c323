"""Model definitions: one file per model, each with its config dataclass."""
