"""The release version of calm-core, calm-heads and calm-codecs: the one place it is written.

The three distributions release in lockstep. Hatch reads this file for each of them
(``[tool.hatch.version]`` in their pyproject.toml), ``calm_core.__version__`` re-exports it, and
tests/test_release_metadata.py fails when the exact ``calm-core==`` pins of calm-heads and
calm-codecs (or anything else that repeats the number) disagree with it.
"""

__version__ = "0.1.0"
