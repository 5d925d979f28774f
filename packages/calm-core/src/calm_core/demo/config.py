"""The settings of ``calm demo``: sizes and budgets of every stage, and what ``--quick`` changes."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from calm_core.config import ConfigModel
from calm_core.presets import BENCH_BACKBONE, BENCH_CODEC, BENCH_ENERGY
from calm_core.runtime import DEVICE_PATTERN, check_device_spec

__all__ = ["QUICK_OVERRIDES", "DemoCodecConfig", "DemoConfig", "DemoEvalConfig", "DemoLMConfig"]


class DemoCodecConfig(ConfigModel):
    """The codec stage: the tuned ``calm train-codec`` recipe, shortened, plus a time budget."""

    hidden_size: int = Field(BENCH_CODEC["hidden_size"], ge=8, description="Codec width.")
    intermediate_size: int = Field(
        BENCH_CODEC["intermediate_size"], ge=8, description="Codec SwiGLU inner width."
    )
    latent_size: int = Field(
        BENCH_CODEC["latent_size"], ge=1, description="Latent size D per chunk."
    )
    recipe: str = Field("default", description="The `calm train-codec` recipe to shorten.")
    steps: int = Field(
        700,
        ge=1,
        description="Most optimizer steps (fewer when the time budget cannot fit them); the "
        "recipe's schedule is scaled to the steps actually planned.",
    )
    time_budget_s: float = Field(270.0, gt=0, description="Stop training after this many seconds.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per step (None: recipe's).")
    seq_len: int | None = Field(None, ge=4, description="Tokens per sequence (None: recipe's).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (None: recipe's).")
    target_accuracy: float = Field(
        0.995,
        gt=0,
        le=1,
        description="Stop early once this share of tokens of a training sample is reconstructed.",
    )
    check_every: int = Field(50, ge=0, description="Steps between target checks (0: never).")


class DemoLMConfig(ConfigModel):
    """The CALM / AR stage: the shared backbone, the energy head and the training budget."""

    hidden_size: int = Field(BENCH_BACKBONE["hidden_size"], ge=8, description="Backbone width H.")
    intermediate_size: int = Field(
        BENCH_BACKBONE["intermediate_size"], ge=8, description="Backbone SwiGLU inner width."
    )
    num_layers: int = Field(BENCH_BACKBONE["num_layers"], ge=1, description="Backbone layers.")
    num_heads: int = Field(BENCH_BACKBONE["num_heads"], ge=1, description="Attention heads.")
    head_blocks: int = Field(
        BENCH_ENERGY["num_blocks"], ge=1, description="Energy-head residual blocks."
    )
    noise_size: int = Field(BENCH_ENERGY["noise_size"], ge=1, description="Energy-head noise size.")
    steps: int = Field(600, ge=1, description="Most optimizer steps (CALM; AR takes the same).")
    time_budget_s: float = Field(
        100.0, gt=0, description="Stop each model's training after this many seconds."
    )
    batch_size: int = Field(8, ge=1, description="Sequences per step.")
    seq_len: int = Field(256, ge=8, description="Tokens per sequence (a multiple of K).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(30, ge=0, description="Linear warm-up steps.")


class DemoEvalConfig(ConfigModel):
    """Held-out evaluation and sampling."""

    brier_blocks: int = Field(8, ge=1, description="Held-out blocks scored by BrierLM.")
    brier_block_len: int = Field(256, ge=16, description="Tokens per BrierLM block.")
    num_prompts: int = Field(3, ge=1, description="Held-out prompts to continue.")
    prompt_tokens: int = Field(32, ge=4, description="Prompt length in tokens (multiple of K).")
    new_tokens: int = Field(48, ge=1, description="Tokens generated per continuation.")
    temperatures: list[float] = Field(
        default_factory=lambda: [1.0, 0.5], description="Sampling temperatures in (0, 1]."
    )
    num_candidates: int = Field(
        200, ge=2, description="CALM batch-approximation candidates below T=1."
    )
    speed_new_tokens: int = Field(64, ge=4, description="Tokens per row in the speed probe.")

    @field_validator("temperatures")
    @classmethod
    def _check_temperatures(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not 0.0 < t <= 1.0]
        if bad or not value:
            raise ValueError(f"temperatures must be a non-empty list in (0, 1], got {value}")
        return value


class DemoConfig(ConfigModel):
    """Everything ``calm demo`` does; ``--config FILE`` may set any field, flags override."""

    vocab_size: int = Field(2048, ge=260, description="BPE vocabulary size.")
    chunk_size: int = Field(4, ge=1, description="K, tokens per chunk.")
    val_docs: int = Field(6, ge=1, description="Held-out documents (never trained on).")
    seed: int = Field(0, ge=0, description="Seed of the split, the data order and every model.")
    device: str = Field(
        "auto",
        json_schema_extra={"pattern": DEVICE_PATTERN},
        description="Where the models train and generate: auto, cpu, cuda, cuda:N or mps.",
    )
    codec: DemoCodecConfig = Field(default_factory=lambda: DemoCodecConfig.model_validate({}))
    lm: DemoLMConfig = Field(default_factory=lambda: DemoLMConfig.model_validate({}))
    eval: DemoEvalConfig = Field(default_factory=lambda: DemoEvalConfig.model_validate({}))

    @field_validator("device")
    @classmethod
    def _device_spec(cls, spec: str) -> str:
        return check_device_spec(spec)  # whether it exists here is checked when it is resolved


#: what ``--quick`` changes (a smoke test of the whole pipeline, about a minute on 2 cores)
QUICK_OVERRIDES: dict[str, Any] = {
    "vocab_size": 512,
    "val_docs": 4,
    "codec": {
        "hidden_size": 64,
        "intermediate_size": 160,
        "latent_size": 16,
        "steps": 60,
        "time_budget_s": 15.0,
        "batch_size": 8,
        "seq_len": 128,
        "check_every": 20,
    },
    "lm": {
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_layers": 2,
        "num_heads": 2,
        "noise_size": 8,
        "steps": 30,
        "time_budget_s": 10.0,
        "batch_size": 4,
        "seq_len": 64,
        "warmup_steps": 3,
    },
    "eval": {
        "brier_blocks": 2,
        "brier_block_len": 64,
        "num_prompts": 1,
        "prompt_tokens": 16,
        "new_tokens": 16,
        "num_candidates": 20,
        "speed_new_tokens": 16,
    },
}
