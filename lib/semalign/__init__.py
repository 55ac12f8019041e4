"""semalign: cross-scale knowledge transfer through latent semantic alignment (arXiv 2510.24208)."""

from semalign.errors import SemalignError

__all__ = ["SemalignError"]
