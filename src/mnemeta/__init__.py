"""mnemeta: memory-based meta-learning for PyTorch."""

from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import MnemetaError

__version__ = "0.1.0"
__all__ = ["EpisodeBatch", "MnemetaError", "Support", "__version__"]
