"""The standard next-token Transformer baseline, on exactly the same backbone as CALM.

``tokens -> embedding -> Backbone -> lm_head -> logits``; trained with next-token cross-entropy,
generating one token per backbone call through the shared KV-cached machinery of
:mod:`calm_core.generation`. Output embeddings are tied to the input table or not
(``tie_embeddings``; the benchmark configuration unties them). Parameter names match Hugging Face
``LlamaForCausalLM`` below ``model.`` so reference checkpoints load by renaming only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from calm_core.backbone import Backbone, BackboneConfig, Cache, StaticKVCache
from calm_core.config import ConfigModel, validate_config
from calm_core.generation import (
    PaddingState,
    PromptsLike,
    check_context,
    check_generation_args,
    collect,
    make_stop_state,
    prepare_prompts,
    sample_from_logits,
)
from calm_core.model_dir import load_pretrained, load_state_into
from calm_core.model_dir import save_pretrained as save_model_dir
from calm_core.presets import BENCH_CODEC

__all__ = ["TransformerLM", "TransformerLMConfig"]


class TransformerLMConfig(ConfigModel):
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
    def _check_ids(self) -> TransformerLMConfig:
        for name in ("pad_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and value >= self.vocab_size:
                raise ValueError(f"{name} ({value}) must be < vocab_size ({self.vocab_size})")
        return self


class TransformerLM(nn.Module):
    """Next-token language model: ``model`` (embeddings + backbone) and ``lm_head``."""

    model_type: ClassVar[str] = "transformer_lm"

    def __init__(self, config: TransformerLMConfig) -> None:
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
        max_new_tokens: int,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
        stop_at_eos: bool = True,
    ) -> Iterator[Tensor]:
        """Yield the new tokens ``[B, 1]`` one step at a time (see :meth:`generate`)."""
        check_generation_args(max_new_tokens, temperature)
        device = self.lm_head.weight.device
        batch = prepare_prompts(
            prompts, vocab_size=self.vocab_size, pad_id=self.config.pad_id, device=device
        )
        B, S0 = batch.tokens.shape
        check_context(S0, max_new_tokens - 1, self.config.backbone.max_positions, "tokens")
        capacity = S0 + max_new_tokens - 1
        cache = StaticKVCache.for_module(self.backbone, B, capacity)
        pad = PaddingState(batch.valid, capacity)
        stop = make_stop_state(B, device, self.config, eos_id=eos_id, stop_at_eos=stop_at_eos)
        positions, mask = pad.prefill()
        hidden = self.hidden_states(batch.tokens, positions, cache, mask)[:, -1]
        for step in range(max_new_tokens):
            token = sample_from_logits(self.lm_head(hidden), temperature, generator)[:, None]
            yield stop.apply(token)
            if stop.all_finished or step == max_new_tokens - 1:
                return
            positions, mask = pad.step()
            hidden = self.hidden_states(token, positions, cache, mask)[:, -1]

    @torch.no_grad()
    def generate(
        self,
        prompts: PromptsLike,
        max_new_tokens: int,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
        stop_at_eos: bool = True,
    ) -> Tensor:
        """Generate continuations of a batch of prompts with a preallocated KV cache.

        Args:
            prompts: ``[B, T]`` LongTensor or a list of token-id lists of unequal lengths (they
                are left-padded and masked; needs ``config.pad_id`` when lengths differ).
            max_new_tokens: tokens to generate per row (>= 1).
            temperature: softmax temperature; 0 means greedy (argmax).
            generator: random source, for reproducibility.
            eos_id: stop id (default ``config.eos_id``); a row stops after its EOS and later
                slots hold the pad id. Generation ends early when every row has stopped.
            stop_at_eos: False turns EOS stopping off (every row gets ``max_new_tokens``), even
                when the config has an ``eos_id``.

        Returns:
            LongTensor ``[B, n]`` of new tokens, ``n <= max_new_tokens``.
        """
        was_training = self.training
        self.eval()
        try:
            it = self.stream(
                prompts,
                max_new_tokens,
                temperature,
                generator=generator,
                eos_id=eos_id,
                stop_at_eos=stop_at_eos,
            )
            return collect(it, max_new_tokens)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to the directory ``path``; see
        :func:`calm_core.model_dir.save_pretrained`."""
        return save_model_dir(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> Self:
        """Load a directory written by :meth:`save_pretrained` (in eval mode); see
        :func:`calm_core.model_dir.load_pretrained`."""
        return load_pretrained(path, map_location=map_location, expected=cls)

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def component_records(self) -> dict[str, dict[str, str]]:
        return {}

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> Self:
        return cls(validate_config(TransformerLMConfig, dict(config)))

    @classmethod
    def from_reference(
        cls, state_dict: Mapping[str, Tensor], ref_config: Mapping[str, Any], **context: Any
    ) -> Self:
        """Load a Hugging Face ``LlamaForCausalLM`` state dict (``model.*``, ``lm_head.weight``).

        Args:
            state_dict: reference keys with any fixture prefix (``ar.``) already stripped.
            ref_config: the reference ``LlamaConfig`` as a dict.
            **context: overrides for :class:`TransformerLMConfig` fields (e.g. ``eos_id``).
        """
        backbone = backbone_config_from_reference(ref_config)
        tie = (
            bool(ref_config.get("tie_word_embeddings", False)) or "lm_head.weight" not in state_dict
        )
        data: dict[str, Any] = {
            "backbone": backbone.model_dump(),
            "vocab_size": int(ref_config["vocab_size"]),
            "tie_embeddings": tie,
            **special_ids_from_reference(ref_config),
        }
        data.update(context)
        model = cls(validate_config(TransformerLMConfig, data))
        ours: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            if key.endswith("rotary_emb.inv_freq"):  # recomputed from the config
                continue
            if key == "model.embed_tokens.weight":
                ours["embed_tokens.weight"] = value
            elif key.startswith("model."):
                ours["backbone." + key[len("model.") :]] = value
            elif key == "lm_head.weight":
                ours[key] = value
        if tie:
            ours["lm_head.weight"] = ours["embed_tokens.weight"]
        _load_strict(model, ours, "reference LlamaForCausalLM state dict")
        return model


def special_ids_from_reference(ref_config: Mapping[str, Any]) -> dict[str, int | None]:
    """``pad_id`` and ``eos_id`` from a Hugging Face config (``pad_token_id``,
    ``eos_token_id``; a list of EOS ids gives its first), None where absent or outside the
    vocabulary, so a converted model stops where the reference stops."""
    vocab = int(ref_config["vocab_size"])
    out: dict[str, int | None] = {}
    for ours, theirs in (("pad_id", "pad_token_id"), ("eos_id", "eos_token_id")):
        value = ref_config.get(theirs)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        out[ours] = int(value) if value is not None and 0 <= int(value) < vocab else None
    return out


def backbone_config_from_reference(ref_config: Mapping[str, Any]) -> BackboneConfig:
    """A :class:`BackboneConfig` from a Hugging Face ``LlamaConfig`` dict (CALM or AR)."""
    try:
        return BackboneConfig(
            hidden_size=int(ref_config["hidden_size"]),
            intermediate_size=int(ref_config["intermediate_size"]),
            num_layers=int(ref_config["num_hidden_layers"]),
            num_heads=int(ref_config["num_attention_heads"]),
            num_kv_heads=int(
                ref_config.get("num_key_value_heads") or ref_config["num_attention_heads"]
            ),
            rope_theta=float(ref_config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(ref_config.get("rms_norm_eps", 1e-6)),
            max_positions=int(ref_config.get("max_position_embeddings", 2048)),
        )
    except KeyError as exc:
        raise ValueError(f"reference config lacks the field {exc.args[0]!r}") from None


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    load_state_into(module, state, source)
