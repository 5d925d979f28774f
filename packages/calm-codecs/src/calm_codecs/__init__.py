"""calm-codecs: K-token chunk autoencoders for CALM, registered through ``calm.codecs``."""

from __future__ import annotations

from calm_codecs.autoencoder import AutoencoderConfig, ChunkAutoencoder, TrainingDraws

__all__ = ["AutoencoderConfig", "ChunkAutoencoder", "TrainingDraws"]
