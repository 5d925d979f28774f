"""Batched, KV-cached generation machinery shared by CALM and the AR baseline.

Both models generate the same way: validate and left-pad the prompts, run the prompt once through
the backbone into a preallocated :class:`~calm_core.backbone.StaticKVCache`, then take one backbone
call per step (a token for the AR model, a chunk of K tokens for CALM). The model-specific part is
only "turn the last hidden state into the next tokens"; everything else lives here.

What is unusual:

* Left padding is exact, not approximate: padded key positions are masked out of attention and
  each row gets its own rotary positions (``0..len-1`` for its real tokens), so a padded row
  computes what the row alone would. When no row is padded, no mask is built at all (the fast
  ``is_causal`` path).
* Stopping is per row and vectorised: tokens after a row's first EOS (inside the same chunk, for
  CALM) are replaced by the fill id and the row is marked finished; the loop ends when every row
  has finished. Finished rows keep being computed (batch shapes stay fixed), never looped over.
* The streaming iterator (:meth:`stream`) is the primitive; ``generate`` just concatenates it.
* Sampling settings travel as one frozen :class:`GenerationOptions`. ``generate`` and ``stream``
  take it as ``options=``, or build it from keyword arguments (``max_new_tokens=8,
  temperature=0.5``), which also override the fields of a given ``options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict, Unpack, runtime_checkable

import torch
from torch import Tensor, nn

from calm_core.backbone import Backbone, StaticKVCache
from calm_core.reductions import argmax_last

__all__ = [
    "GenerationKwargs",
    "GenerationOptions",
    "LanguageModel",
    "PaddedPrompts",
    "PaddingState",
    "PromptsLike",
    "StopState",
    "check_context",
    "check_generation_args",
    "collect",
    "make_stop_state",
    "prepare_prompts",
    "resolve_options",
    "run_to_end",
    "sample_from_logits",
    "start_decoding",
    "to_lists",
]

PromptsLike = Tensor | Sequence[Sequence[int]] | Sequence[Tensor]


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: length, temperature, randomness, stopping, and CALM's sampler knobs.

    Attributes:
        max_new_tokens: tokens per row (>= 1).
        temperature: the AR model: softmax temperature, 0 = greedy. CALM: in ``(0, 1]``; at 1 one
            head sample per step, below 1 the sampler chosen by ``sampling``.
        generator: random source for sampling (a seeded ``torch.Generator`` reproduces a run).
        eos_id: stop id (default: the model config's ``eos_id``); tokens after a row's EOS are
            the pad id, and generation ends when every row has produced one.
        stop_at_eos: False turns EOS stopping off (every row gets ``max_new_tokens``), even
            when the config has an ``eos_id``.
        sampling: CALM below temperature 1: ``"exact"`` rejection sampling
            (:func:`calm_core.sampling.exact_temperature_sample`) or the ``"batch"``
            approximation over ``num_candidates`` head samples.
        num_candidates: CALM's batch sampler: head samples per step (>= 1).
        max_draws: CALM's exact sampler: head draws per row and step before ``on_exhausted``.
        on_exhausted: CALM's exact sampler out of draws: ``"raise"`` or ``"fallback"`` (to a
            plain sample).
    """

    max_new_tokens: int
    temperature: float = 1.0
    generator: torch.Generator | None = None
    eos_id: int | None = None
    stop_at_eos: bool = True
    sampling: Literal["exact", "batch"] = "exact"
    num_candidates: int = 200
    max_draws: int = 10_000
    on_exhausted: Literal["raise", "fallback"] = "raise"

    def __post_init__(self) -> None:
        check_generation_args(self.max_new_tokens, self.temperature)
        if self.sampling not in ("exact", "batch"):
            raise ValueError(f"sampling must be 'exact' or 'batch', got {self.sampling!r}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.on_exhausted not in ("raise", "fallback"):
            raise ValueError(
                f"on_exhausted must be 'raise' or 'fallback', got {self.on_exhausted!r}"
            )

    @property
    def uses_calm_sampler(self) -> bool:
        """Whether a CALM-only knob differs from its default (the AR model refuses those)."""
        return any(
            getattr(self, f.name) != f.default
            for f in dataclasses.fields(self)
            if f.name in _CALM_ONLY
        )


_CALM_ONLY = ("sampling", "num_candidates", "max_draws", "on_exhausted")


class GenerationKwargs(TypedDict, total=False):
    """The fields of :class:`GenerationOptions` besides length and temperature, as keywords of
    ``generate`` / ``stream`` (for type checkers; the dataclass holds defaults and docs)."""

    generator: torch.Generator | None
    eos_id: int | None
    stop_at_eos: bool
    sampling: Literal["exact", "batch"]
    num_candidates: int
    max_draws: int
    on_exhausted: Literal["raise", "fallback"]


def resolve_options(
    options: GenerationOptions | None,
    max_new_tokens: int | None,
    temperature: float | None,
    overrides: GenerationKwargs,
) -> GenerationOptions:
    """One :class:`GenerationOptions` from ``options`` and keyword arguments (which win).

    Raises:
        TypeError: neither ``max_new_tokens`` nor ``options`` given, or an unknown keyword.
        ValueError: a value out of range (see :class:`GenerationOptions`).
    """
    fields: dict[str, object] = dict(overrides)
    if max_new_tokens is not None:
        fields["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        fields["temperature"] = temperature
    if options is not None:
        return dataclasses.replace(options, **fields)  # type: ignore[arg-type]
    if "max_new_tokens" not in fields:
        raise TypeError(
            "generation needs max_new_tokens (or options=GenerationOptions(max_new_tokens=...))"
        )
    return GenerationOptions(**fields)  # type: ignore[arg-type]


@runtime_checkable
class LanguageModel(Protocol):
    """What CALM and the AR baseline share: a vocabulary, special ids, and batched generation.

    ``stream`` yields the new tokens ``[B, k]`` step by step (k = 1 for the AR model, K for
    CALM; the last piece cut to ``max_new_tokens`` in total); ``generate`` returns them all,
    ``[B, n]`` with ``n <= max_new_tokens`` (fewer when every row stopped at EOS).
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def config(self) -> TokenIds: ...

    def stream(
        self,
        prompts: PromptsLike,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        *,
        options: GenerationOptions | None = None,
        **overrides: Unpack[GenerationKwargs],
    ) -> Iterator[Tensor]: ...

    def generate(
        self,
        prompts: PromptsLike,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        *,
        options: GenerationOptions | None = None,
        **overrides: Unpack[GenerationKwargs],
    ) -> Tensor: ...


def run_to_end(
    model: nn.Module, stream: Callable[[], Iterator[Tensor]], max_new_tokens: int
) -> Tensor:
    """``generate`` from ``stream``: in eval mode (the caller's mode restored), concatenated."""
    was_training = model.training
    model.eval()
    try:
        return collect(stream(), max_new_tokens)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class PaddedPrompts:
    """Prompts left-padded into one batch.

    Attributes:
        tokens: ``[B, T]`` token ids; ``T`` a multiple of the requested ``multiple``.
        valid: ``[B, T]`` bool, True at real prompt tokens.
        lengths: prompt lengths (real tokens) per row.
    """

    tokens: Tensor
    valid: Tensor
    lengths: list[int]

    @property
    def padded(self) -> bool:
        """Whether any row is padded."""
        return bool(min(self.lengths) != self.tokens.shape[1])


def prepare_prompts(
    prompts: PromptsLike,
    *,
    vocab_size: int,
    pad_id: int | None,
    multiple: int = 1,
    device: torch.device | str | None = None,
) -> PaddedPrompts:
    """Validate prompts and left-pad them to one length, a multiple of ``multiple``.

    Args:
        prompts: a LongTensor ``[B, T]`` (or ``[T]`` for one prompt), or a list of token-id lists
            or 1-D tensors of possibly different lengths.
        vocab_size: ids must lie in ``[0, vocab_size)``.
        pad_id: the id written into padded slots; needed only when padding is required.
        multiple: the padded length is rounded up to a multiple of this (K for CALM).
        device: where the batch goes.

    Raises:
        ValueError: for an empty batch, an empty prompt, ids outside the vocabulary, or padding
            needed without a ``pad_id``.
    """
    rows: list[Tensor]
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts.unsqueeze(0)
        if prompts.dim() != 2:
            raise ValueError(
                f"prompts tensor must be [B, T] token ids, got shape {tuple(prompts.shape)}"
            )
        rows = list(prompts)
    else:
        if isinstance(prompts, str | bytes):
            raise ValueError("prompts must be token ids; encode text with the tokenizer first")
        # no forced dtype: a list of floats or bools must be refused below, not truncated
        rows = [torch.as_tensor(p).reshape(-1) for p in prompts]
    if not rows:
        raise ValueError("no prompts given: pass at least one prompt")
    for i, row in enumerate(rows):
        if row.numel() == 0:
            raise ValueError(
                f"prompt {i} is empty; every prompt needs at least one token (e.g. a BOS/EOS id)"
            )
        if row.is_floating_point() or row.is_complex() or row.dtype == torch.bool:
            raise ValueError(f"prompt {i} must hold integer token ids, got dtype {row.dtype}")
        row = rows[i] = row.long()  # also uint16/uint32 shards, which lack min/max kernels
        lo, hi = int(row.min()), int(row.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"prompt {i} contains token id {bad}, outside the vocabulary [0, {vocab_size}); "
                "use the tokenizer the model was trained with"
            )
    lengths = [int(r.numel()) for r in rows]
    longest = max(lengths)
    total = -(-longest // multiple) * multiple
    if (total != min(lengths)) and pad_id is None:
        raise ValueError(
            f"prompts need left padding (lengths {sorted(set(lengths))}, padded length {total}) "
            "but the model has no pad_id; set pad_id in the model config or give prompts of "
            f"equal length that is a multiple of {multiple}"
        )
    fill = 0 if pad_id is None else pad_id
    tokens = torch.full((len(rows), total), fill, dtype=torch.long)
    valid = torch.zeros((len(rows), total), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, total - row.numel() :] = row.long()
        valid[i, total - row.numel() :] = True
    return PaddedPrompts(tokens.to(device), valid.to(device), lengths)


class PaddingState:
    """Attention masks and rotary positions for a left-padded batch across generation steps.

    Args:
        valid: ``[B, S0]`` bool, True at real (attendable) positions of the prefill.
        capacity: total backbone positions the cache holds (prefill + decode steps).
    """

    def __init__(self, valid: Tensor, capacity: int) -> None:
        B, S0 = valid.shape
        self.padded = not bool(valid.all())
        self._len = S0
        self.key_valid = torch.ones((B, capacity), dtype=torch.bool, device=valid.device)
        self.key_valid[:, :S0] = valid
        self.next_pos = valid.sum(dim=1)  # [B]

    def prefill(self) -> tuple[Tensor | None, Tensor | None]:
        """``(positions [B, S0], attn_mask [B, 1, S0, S0])``, or ``(None, None)`` if unpadded."""
        if not self.padded:
            return None, None
        S0 = self._len
        valid = self.key_valid[:, :S0]
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        causal = torch.ones((S0, S0), dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(S0, dtype=torch.bool, device=valid.device)
        # A pad query sees itself so that its softmax row is never empty (no NaN in the cache).
        mask = (valid[:, None, None, :] & causal) | eye
        return positions, mask

    def step(self) -> tuple[Tensor | None, Tensor | None]:
        """Positions ``[B, 1]`` and mask ``[B, 1, 1, S]`` for the next single-position call."""
        if not self.padded:
            self._len += 1
            return None, None
        positions = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        self._len += 1
        return positions, self.key_valid[:, None, None, : self._len]


class StopState:
    """Per-row EOS stopping: masks tokens after a row's first EOS and tracks finished rows."""

    def __init__(self, batch_size: int, eos_id: int | None, fill_id: int, device: torch.device):
        self.eos_id = eos_id
        self.fill_id = fill_id
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.all_finished = False

    def apply(self, new: Tensor) -> Tensor:
        """``new [B, k]`` -> the tokens to emit (after-EOS positions set to ``fill_id``)."""
        if self.eos_id is None:
            return new
        is_eos = new == self.eos_id
        seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
        drop = seen_before | self.finished[:, None]
        out = torch.where(drop, torch.full_like(new, self.fill_id), new)
        self.finished = self.finished | is_eos.any(dim=1)
        self.all_finished = bool(self.finished.all())
        return out


class TokenIds(Protocol):
    """The special ids of a model config (CALMConfig, ARConfig)."""

    pad_id: int | None
    eos_id: int | None


def make_stop_state(
    batch_size: int,
    device: torch.device,
    config: TokenIds,
    *,
    eos_id: int | None,
    stop_at_eos: bool,
) -> StopState:
    """The stop state of one generation call.

    ``eos_id`` None means the config's ``eos_id``; ``stop_at_eos=False`` turns stopping off
    whatever the ids (every row gets all its tokens). After-EOS slots hold the config's
    ``pad_id`` (or the EOS id itself, or 0, for a model without one).
    """
    eos = (eos_id if eos_id is not None else config.eos_id) if stop_at_eos else None
    fill = config.pad_id if config.pad_id is not None else (eos or 0)
    return StopState(batch_size, eos, fill, device)


def start_decoding(
    backbone: Backbone,
    valid: Tensor,
    steps: int,
    max_positions: int,
    unit: str,
    config: TokenIds,
    options: GenerationOptions,
) -> tuple[StaticKVCache, PaddingState, StopState]:
    """The state of one generation call of ``steps`` backbone steps after the prompt.

    ``valid [B, S0]`` marks the prompt's real positions (``unit``: what one position is, for the
    error when prompt and generation do not fit ``max_positions``). The cache holds the prefill
    and the ``steps - 1`` decode calls after it (the last step's output is never fed back).
    """
    B, S0 = valid.shape
    check_context(S0, steps - 1, max_positions, unit)
    capacity = S0 + steps - 1
    cache = StaticKVCache.for_module(backbone, B, capacity)
    stop = make_stop_state(
        B, valid.device, config, eos_id=options.eos_id, stop_at_eos=options.stop_at_eos
    )
    return cache, PaddingState(valid, capacity), stop


def sample_from_logits(
    logits: Tensor, temperature: float, generator: torch.Generator | None = None
) -> Tensor:
    """``logits [B, V]`` -> ids ``[B]``: argmax at ``temperature == 0``, else softmax sampling."""
    if temperature == 0:
        return argmax_last(logits)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def collect(stream: Iterator[Tensor], max_new_tokens: int) -> Tensor:
    """Concatenate a stream of ``[B, k]`` pieces and cut it at ``max_new_tokens`` columns."""
    pieces = list(stream)
    if not pieces:
        raise RuntimeError("generation produced no tokens")
    return torch.cat(pieces, dim=1)[:, :max_new_tokens]


def to_lists(tokens: Tensor, eos_id: int | None = None) -> list[list[int]]:
    """Rows of generated ids as lists, each cut after its first EOS (kept) when ``eos_id`` given."""
    out: list[list[int]] = []
    for row in tokens.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        out.append(row)
    return out


def check_generation_args(max_new_tokens: int, temperature: float) -> None:
    """Shared argument checks with messages that say what is allowed."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def check_context(prompt_positions: int, new_positions: int, max_positions: int, unit: str) -> None:
    """Refuse prompts (or prompt + generation) longer than the model's context."""
    if prompt_positions > max_positions:
        raise ValueError(
            f"prompt is too long: {prompt_positions} {unit} but the context holds "
            f"{max_positions}; shorten the prompt"
        )
    if prompt_positions + new_positions > max_positions:
        raise ValueError(
            f"prompt ({prompt_positions} {unit}) plus generation ({new_positions} {unit}) "
            f"exceeds the context of {max_positions} {unit}; lower max_new_tokens or shorten "
            "the prompt"
        )
