"""calm's speed and quality benchmarks; the entry point is ``python benchmarks/run.py``."""
