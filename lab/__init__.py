"""The lab: experiments over many topics and variants of the meme chain, and their reports."""

from lab.costs import DECLARED_POINTS, declared_points
from lab.experiment import Experiment, RowResult, Variant, read_topics, variant_grid

__all__ = [
    "DECLARED_POINTS",
    "Experiment",
    "RowResult",
    "Variant",
    "declared_points",
    "read_topics",
    "variant_grid",
]
