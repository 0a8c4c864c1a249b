"""Shared by the bench scripts."""

import json


def print_figures(figures: dict) -> None:
    """A readable table, then the figures as one JSON line (the line tools read)."""
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{k:{width}s}  {v}")
    print(json.dumps(figures))
