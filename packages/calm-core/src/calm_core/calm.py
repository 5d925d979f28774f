"""CALM: a backbone that predicts the next chunk's latent, a generative head, and a frozen codec.

Training (SPEC.md §3): chunks ``0..L-2`` are embedded token by token with the model's own table,
concatenated (``K*H``) and compressed (``Linear(K*H, 2H) -> SiLU -> Linear(2H, H) -> LayerNorm``,
"discrete grounding"); the backbone maps them to hidden states, and ``head.loss`` scores each
hidden state against the frozen codec's posterior of the *next* chunk.

What is unusual:

* The codec is frozen, in fp32 and in eval mode, always: its parameters have
  ``requires_grad=False``; :meth:`CALM.train` keeps it in eval mode (the reference flips it back
  to training mode, which turns on its token masking and a bf16 cast); dtype casts of the model
  (``.to(torch.bfloat16)``, ``.half()``) move the codec's device but leave it in float32; its
  encoder runs under ``no_grad`` with autocast disabled.
* Vocabulary and K come from the codec. A config that states them must agree with the codec, or
  construction fails naming both values.
* Generation prompts whose length is not a multiple of K are **left-padded with ``pad_id`` inside
  their first chunk**: those PAD tokens are part of the first input chunk (the model sees them, as
  it saw PAD at the end of documents in training). Whole chunks of padding added to align a batch
  are masked out of attention instead, so a padded row generates what the row alone would.
* The head and the codec are found through the registry by name; the saved config holds both
  full specs, and ``model.safetensors`` holds the codec's weights, so a model directory is
  self-contained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, Unpack

import torch
from pydantic import Field
from torch import Tensor, nn

from calm_core.backbone import Backbone, BackboneConfig, Cache
from calm_core.config import (
    ComponentSpec,
    ConfigError,
    ConfigModel,
    validate_component_config,
    validate_config,
)
from calm_core.generation import (
    GenerationKwargs,
    GenerationOptions,
    PromptsLike,
    prepare_prompts,
    resolve_options,
    run_to_end,
    start_decoding,
)
from calm_core.interfaces import Codec, GenerativeHead, LatentPosterior
from calm_core.model_dir import PretrainedModule, component_name, component_record, load_pretrained
from calm_core.registry import codecs, heads
from calm_core.sampling import exact_temperature_sample, lazy_batch_temperature_sample

__all__ = ["CALM", "CALMConfig", "validate_calm_config"]


class CALMConfig(ConfigModel):
    """A CALM model: backbone shape, head spec, codec spec (incl. its full config) and ids."""

    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig.model_validate({}))
    head: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="energy"),
        description="Generative head: registered name and its config.",
    )
    codec: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="autoencoder"),
        description="Frozen codec: registered name and its full config.",
    )
    vocab_size: int | None = Field(
        None, gt=1, description="Token vocabulary V; None = the codec's. Must match the codec."
    )
    chunk_size: int | None = Field(
        None, gt=0, description="Tokens per chunk K; None = the codec's. Must match the codec."
    )
    pad_id: int | None = Field(
        None,
        ge=0,
        description="PAD id: embedding padding_idx and the id used to left-pad prompts.",
    )
    eos_id: int | None = Field(None, ge=0, description="Default stop id for generate().")
    layer_norm_eps: float = Field(1e-6, gt=0, description="Epsilon of the compressor LayerNorm.")


def validate_calm_config(data: Any) -> CALMConfig:
    """Two-pass validation: the CALM config, then head and codec configs via the registry.

    Errors name the full path, e.g. ``head.config.noise_size``.
    """
    if isinstance(data, CALMConfig):  # never mutate the caller's object
        data = data.model_dump()
    config = validate_config(CALMConfig, data)
    head_cls = heads.get(config.head.name)
    head_cfg = validate_component_config(head_cls, config.head.config, path="head")
    codec_cls = codecs.get(config.codec.name)
    codec_cfg = validate_component_config(codec_cls, config.codec.config, path="codec")
    config.head = ComponentSpec(name=config.head.name, config=head_cfg.model_dump(mode="json"))
    config.codec = ComponentSpec(name=config.codec.name, config=codec_cfg.model_dump(mode="json"))
    return config


def _codec_spec(codec: Codec) -> ComponentSpec:
    """The spec of a built codec, named by the registry name it was built (or loaded) under."""
    return ComponentSpec(name=component_name(codec), config=codec.config.model_dump(mode="json"))


class CALM(PretrainedModule[CALMConfig]):
    """Continuous autoregressive LM: ``embed_tokens``, ``embed_proj``, ``backbone``, ``head``,
    ``codec`` (frozen).

    Args:
        config: a :class:`CALMConfig` (or a mapping validated into one).
        codec: an already built (e.g. pretrained) codec; default: built from ``config.codec``
            with random weights (a saved model's weights then overwrite it).
    """

    model_type: ClassVar[str] = "calm"

    def __init__(self, config: CALMConfig | Mapping[str, Any], codec: Codec | None = None) -> None:
        super().__init__()
        if codec is not None:
            data = config.model_dump() if isinstance(config, CALMConfig) else dict(config)
            data["codec"] = _codec_spec(codec).model_dump()
            config = data
        cfg = validate_calm_config(config)
        if codec is None:
            codec = codecs.build(cfg.codec)
        if not isinstance(codec, Codec):
            raise TypeError(f"codec must be a calm_core.interfaces.Codec, got {type(codec)}")
        for field, ours in (("vocab_size", cfg.vocab_size), ("chunk_size", cfg.chunk_size)):
            theirs = int(getattr(codec, field))
            if ours is not None and ours != theirs:
                raise ConfigError(
                    f"the codec's {field} is {theirs} but the CALM config says {field}={ours}; "
                    f"use a codec trained with {field}={ours} or set {field} to {theirs} (or None)"
                )
        cfg.vocab_size, cfg.chunk_size = codec.vocab_size, codec.chunk_size
        for name in ("pad_id", "eos_id"):
            value = getattr(cfg, name)
            if value is not None and value >= codec.vocab_size:
                raise ConfigError(
                    f"{name}={value} is outside the codec's vocabulary of {codec.vocab_size}"
                )
        self.config = cfg
        H, K, V = cfg.backbone.hidden_size, codec.chunk_size, codec.vocab_size
        self.chunk_size = K
        self.vocab_size = V
        self.embed_tokens = nn.Embedding(V, H, padding_idx=cfg.pad_id)
        self.embed_proj = nn.Sequential(
            nn.Linear(K * H, 2 * H),
            nn.SiLU(),
            nn.Linear(2 * H, H),
            nn.LayerNorm(H, eps=cfg.layer_norm_eps),
        )
        self.backbone = Backbone(cfg.backbone)
        self.head: GenerativeHead = heads.build(
            cfg.head, hidden_size=H, latent_size=codec.latent_size
        )
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        if cfg.pad_id is not None:
            with torch.no_grad():
                self.embed_tokens.weight[cfg.pad_id].zero_()
        self.codec: Codec = codec
        self.codec.requires_grad_(False)
        self.codec.float()
        self.codec.eval()

    # -------------------------------------------------------------------------- builders
    @classmethod
    def from_codec(
        cls,
        codec: Codec | str | Path,
        *,
        backbone: BackboneConfig | Mapping[str, Any] | None = None,
        head: ComponentSpec | Mapping[str, Any] | str = "energy",
        **fields: Any,
    ) -> CALM:
        """Build a CALM around a codec (an instance or a codec model directory).

        Args:
            codec: the frozen codec, or the path of a directory saved by ``calm train-codec``.
            backbone: backbone shape (default :class:`BackboneConfig` defaults).
            head: head spec or bare registered name.
            **fields: further :class:`CALMConfig` fields (``pad_id``, ``eos_id``, ...).
        """
        if not isinstance(codec, Codec):
            codec = load_pretrained(codec, expected=Codec)  # type: ignore[type-abstract]
        spec = ComponentSpec(name=head) if isinstance(head, str) else head
        data: dict[str, Any] = {
            "backbone": backbone if backbone is not None else {},
            "head": spec.model_dump() if isinstance(spec, ComponentSpec) else dict(spec),
            **fields,
        }
        if isinstance(data["backbone"], BackboneConfig):
            data["backbone"] = data["backbone"].model_dump()
        return cls(data, codec=codec)

    # ------------------------------------------------------------------ frozen-codec rules
    def train(self, mode: bool = True) -> Self:
        """Set train/eval mode; the frozen codec always stays in eval mode."""
        super().train(mode)
        self.codec.eval()
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Self:
        # The codec follows device moves but never dtype casts: keep it float32.
        codec = self._modules.pop("codec", None)
        try:
            super()._apply(fn, recurse)
        finally:
            if codec is not None:
                self._modules["codec"] = codec
        if codec is not None:
            probe = next(codec.parameters(), None)
            if probe is not None:
                moved = fn(torch.empty(0, device=probe.device, dtype=probe.dtype))
                if moved.dtype == probe.dtype:  # a move (or to_empty from meta): apply it as is
                    codec._apply(fn, recurse)
                elif moved.device != probe.device:  # a cast: follow its device only
                    codec.to(device=moved.device)
        return self

    # ----------------------------------------------------------------------------- forward
    def embed_chunks(self, chunk_tokens: Tensor) -> Tensor:
        """Discrete grounding: ``[B, n, K]`` token ids -> ``[B, n, H]`` input vectors."""
        B, n, K = chunk_tokens.shape
        e = self.embed_tokens(chunk_tokens).reshape(B, n, K * self.embed_tokens.embedding_dim)
        out: Tensor = self.embed_proj(e)
        return out

    def hidden_states(
        self,
        tokens: Tensor,
        cache: Cache | None = None,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tokens [B, L*K] -> hidden [B, L, H]``; the hidden state at chunk j predicts j+1."""
        chunks = self._chunks(tokens)
        out: Tensor = self.backbone(self.embed_chunks(chunks), positions, cache, attn_mask)
        return out

    @torch.no_grad()
    def encode_targets(self, tokens: Tensor) -> LatentPosterior:
        """The frozen codec's posterior of ``tokens [B, L*K]``, in float32, without autograd."""
        with torch.autocast(tokens.device.type, enabled=False):
            post = self.codec.encode(tokens)
        return post.detach()

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        """Training loss on ``tokens [B, L*K]`` (L >= 2): mean head loss over chunks 1..L-1."""
        chunks = self._chunks(tokens)
        if chunks.shape[1] < 2:
            raise ValueError(
                f"training needs at least 2 chunks per row (>= {2 * self.chunk_size} tokens), "
                f"got {tokens.shape[1]} tokens"
            )
        K = self.chunk_size
        hidden = self.backbone(self.embed_chunks(chunks[:, :-1]))  # [B, L-1, H]
        target = self.encode_targets(tokens[:, K:]).reshape(-1)
        per_position = self.head.loss(hidden.reshape(-1, hidden.shape[-1]), target)
        return {"loss": per_position.mean()}

    def _chunks(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L*K], got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if T % self.chunk_size:
            raise ValueError(
                f"sequence length {T} is not a multiple of the chunk size K={self.chunk_size}"
            )
        return tokens.reshape(B, T // self.chunk_size, self.chunk_size)

    # -------------------------------------------------------------------------- generation
    def _next_chunk(self, hidden: Tensor, options: GenerationOptions) -> Tensor:
        """``hidden [B, H]`` -> the next chunk's tokens ``[B, K]``."""
        generator = options.generator

        def sampler(num: int) -> Tensor:
            latents = self.head.sample(hidden, num, generator)  # [num, B, D]
            return self.codec.decode_tokens(latents.float())  # [num, B, K]

        if options.temperature == 1.0:
            return sampler(1)[0]
        if options.sampling == "exact":
            return exact_temperature_sample(
                sampler,
                options.temperature,
                max_draws=options.max_draws,
                on_exhausted=options.on_exhausted,
                generator=generator,
            )
        # the batch approximation decodes lazily: only candidates whose prefix can still repeat
        latents = self.head.sample(hidden, options.num_candidates, generator).float()
        return lazy_batch_temperature_sample(
            self.codec.decode_states(latents),
            self.codec.tokens_from_states,
            options.temperature,
            generator=generator,
        )

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
        """Yield new tokens ``[B, K]`` one chunk at a time (see :meth:`generate`).

        The last chunk is cut so that exactly ``max_new_tokens`` tokens come out in total.
        """
        opts = resolve_options(options, max_new_tokens, temperature, overrides)
        if not 0 < opts.temperature <= 1:
            raise ValueError(
                f"CALM temperature must be in (0, 1] (likelihood-free sampling can only sharpen), "
                f"got {opts.temperature}"
            )
        K = self.chunk_size
        device = self.embed_tokens.weight.device
        batch = prepare_prompts(
            prompts,
            vocab_size=self.vocab_size,
            pad_id=self.config.pad_id,
            multiple=K,
            device=device,
        )
        B, T0 = batch.tokens.shape
        steps = -(-opts.max_new_tokens // K)
        chunk_valid = batch.valid.reshape(B, T0 // K, K).any(dim=-1)
        cache, pad, stop = start_decoding(
            self.backbone, chunk_valid, steps, self.config.backbone.max_positions, "chunks",
            self.config, opts,
        )  # fmt: skip
        positions, mask = pad.prefill()
        hidden = self.hidden_states(batch.tokens, cache, positions=positions, attn_mask=mask)
        h = hidden[:, -1]
        remaining = opts.max_new_tokens
        for step in range(steps):
            chunk = self._next_chunk(h, opts)  # [B, K]
            out = stop.apply(chunk)
            yield out if remaining >= K else out[:, :remaining]
            remaining -= K
            if stop.all_finished or step == steps - 1:
                return
            positions, mask = pad.step()
            x = self.embed_chunks(chunk[:, None])
            h = self.backbone(x, positions, cache, mask)[:, 0]

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
        """Generate continuations, one backbone call per chunk of K tokens (KV-cached).

        Args:
            prompts: ``[B, T]`` LongTensor or a list of token-id lists of any lengths. A prompt
                whose length is not a multiple of K is left-padded with ``config.pad_id`` inside
                its first chunk; rows shorter than the longest get whole masked chunks.
            max_new_tokens: tokens per row (>= 1); ``ceil(max_new_tokens / K)`` steps.
            temperature: in ``(0, 1]``. At 1, one head sample per step. Below 1, ``"exact"`` uses
                the exact rejection sampler (at most ``max_draws`` draws per row, then
                ``on_exhausted``) and ``"batch"`` the batch approximation over
                ``num_candidates`` samples.
            options: a :class:`~calm_core.generation.GenerationOptions`; keyword arguments
                (these two and ``generator``, ``eos_id``, ``stop_at_eos``, ``sampling``,
                ``num_candidates``, ``max_draws``, ``on_exhausted``) override its fields.

        Returns:
            LongTensor ``[B, n]`` of new tokens, ``n <= max_new_tokens``.
        """
        opts = resolve_options(options, max_new_tokens, temperature, overrides)
        return run_to_end(self, lambda: self.stream(prompts, options=opts), opts.max_new_tokens)

    # ------------------------------------------------------------------------ persistence
    def component_records(self) -> dict[str, dict[str, str]]:
        return {"head": component_record(self.head), "codec": component_record(self.codec)}

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> Self:
        return cls(dict(config))
