"""The standard next-token Transformer baseline, on exactly the same backbone as CALM.

``tokens -> embedding -> Backbone -> lm_head -> logits``; trained with next-token cross-entropy,
generating one token per backbone call through the shared KV-cached machinery of
:mod:`calm_core.generation`. Output embeddings are tied to the input table or not
(``tie_embeddings``; the benchmark configuration unties them). Parameter names match Hugging Face
``LlamaForCausalLM`` below ``model.`` so reference checkpoints load by renaming only.

One name inside calm: ``ar`` (this module, ``model_type``, the presets' ``kind``, ``calm train
--model ar``), with :class:`ARModel` / :class:`ARConfig`. Only the published presets keep the
paper's names (``transformer-s/m/l``). Directories saved under the former type name
``transformer_lm`` still load.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self, Unpack

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from calm_core.backbone import Backbone, BackboneConfig, Cache
from calm_core.config import ConfigModel, validate_config
from calm_core.generation import (
    GenerationKwargs,
    GenerationOptions,
    PromptsLike,
    prepare_prompts,
    resolve_options,
    run_to_end,
    sample_from_logits,
    start_decoding,
)
from calm_core.model_dir import PretrainedModule
from calm_core.presets import BENCH_CODEC

__all__ = ["ARConfig", "ARModel"]


class ARConfig(ConfigModel):
    """The AR baseline: a backbone, a vocabulary and the output-embedding choice."""

    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig.model_validate({}))
    vocab_size: int = Field(
        BENCH_CODEC["vocab_size"], gt=1, description="Token vocabulary size V (bench default)."
    )
    tie_embeddings: bool = Field(False, description="Share the input table with the LM head.")
    pad_id: int | None = Field(
        None, ge=0, description="Padding id: embedding padding_idx, ignored by the loss."
    )
    eos_id: int | None = Field(None, ge=0, description="Default stop id for generate().")

    @model_validator(mode="after")
    def _check_ids(self) -> ARConfig:
        for name in ("pad_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and value >= self.vocab_size:
                raise ValueError(f"{name} ({value}) must be < vocab_size ({self.vocab_size})")
        return self


class ARModel(PretrainedModule[ARConfig]):
    """Next-token language model: ``model`` (embeddings + backbone) and ``lm_head``."""

    model_type: ClassVar[str] = "ar"

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config = config
        H = config.backbone.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_id)
        self.backbone = Backbone(config.backbone)
        self.lm_head = nn.Linear(H, config.vocab_size, bias=False)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        if config.pad_id is not None:
            with torch.no_grad():
                self.embed_tokens.weight[config.pad_id].zero_()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # ---------------------------------------------------------------------------------- forward
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def hidden_states(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: Cache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tokens [B, T] -> hidden [B, T, H]`` (see :meth:`Backbone.forward` for the rest)."""
        out: Tensor = self.backbone(self.embed_tokens(tokens), positions, cache, attn_mask)
        return out

    def logits(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: Cache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tokens [B, T] -> logits [B, T, V]``; logits at ``t`` predict token ``t + 1``."""
        out: Tensor = self.lm_head(self.hidden_states(tokens, positions, cache, attn_mask))
        return out

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        """Mean next-token cross-entropy over ``tokens [B, T]`` (targets equal to pad ignored)."""
        if tokens.dim() != 2 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be [B, T] with T >= 2, got {tuple(tokens.shape)}")
        logits = self.logits(tokens[:, :-1])
        ignore = self.config.pad_id if self.config.pad_id is not None else -100
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            tokens[:, 1:].reshape(-1),
            ignore_index=ignore,
        )
        return {"loss": loss, "perplexity": loss.detach().exp()}

    # ------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def stream(
        self,
        prompts: PromptsLike,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        *,
        options: GenerationOptions | None = None,
        **overrides: Unpack[GenerationKwargs],
    ) -> Iterator[Tensor]:
        """Yield the new tokens ``[B, 1]`` one step at a time (see :meth:`generate`)."""
        opts = resolve_options(options, max_new_tokens, temperature, overrides)
        if opts.uses_calm_sampler:
            raise ValueError(
                "sampling, num_candidates, max_draws and on_exhausted set CALM's likelihood-free "
                "temperature sampler; the AR model samples its softmax (leave them unset)"
            )
        n = opts.max_new_tokens
        device = self.lm_head.weight.device
        batch = prepare_prompts(
            prompts, vocab_size=self.vocab_size, pad_id=self.config.pad_id, device=device
        )
        cache, pad, stop = start_decoding(
            self.backbone, batch.valid, n, self.config.backbone.max_positions, "tokens",
            self.config, opts,
        )  # fmt: skip
        positions, mask = pad.prefill()
        hidden = self.hidden_states(batch.tokens, positions, cache, mask)[:, -1]
        for step in range(n):
            logits = self.lm_head(hidden)
            token = sample_from_logits(logits, opts.temperature, opts.generator)[:, None]
            yield stop.apply(token)
            if stop.all_finished or step == n - 1:
                return
            positions, mask = pad.step()
            hidden = self.hidden_states(token, positions, cache, mask)[:, -1]

    @torch.no_grad()
    def generate(
        self,
        prompts: PromptsLike,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        *,
        options: GenerationOptions | None = None,
        **overrides: Unpack[GenerationKwargs],
    ) -> Tensor:
        """Generate continuations of a batch of prompts with a preallocated KV cache.

        Args:
            prompts: ``[B, T]`` LongTensor or a list of token-id lists of unequal lengths (they
                are left-padded and masked; needs ``config.pad_id`` when lengths differ).
            max_new_tokens: tokens to generate per row (>= 1).
            temperature: softmax temperature; 0 means greedy (argmax).
            options: a :class:`~calm_core.generation.GenerationOptions`; keyword arguments
                (these two and ``generator``, ``eos_id``, ``stop_at_eos``) override its fields.
                CALM's sampler knobs are refused.

        Returns:
            LongTensor ``[B, n]`` of new tokens, ``n <= max_new_tokens``.
        """
        opts = resolve_options(options, max_new_tokens, temperature, overrides)
        return run_to_end(self, lambda: self.stream(prompts, options=opts), opts.max_new_tokens)

    # ------------------------------------------------------------------------------ persistence
    def component_records(self) -> dict[str, dict[str, str]]:
        return {}

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> Self:
        return cls(validate_config(ARConfig, dict(config)))
