"""How a fit stops early: on a signal or request, a non-finite loss, a failed ``compile: true``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CompileError", "NonFiniteLossError", "TrainingInterrupted", "compile_failure"]

#: where torch.compile's own exceptions come from (a failed graph capture or code generation)
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor")


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; ``step`` is the 1-based failing step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal or request after saving ``checkpoint`` at ``step``.

    ``summary`` holds what ``fit()`` would have returned (steps, final_loss, tokens_per_s, ...).
    """

    def __init__(self, step: int, checkpoint: Path | None, reason: str) -> None:
        super().__init__(f"training interrupted ({reason}) at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.reason = reason
        #: what ``fit()`` would have returned at this step
        self.summary: dict[str, Any] = {}


class CompileError(RuntimeError):
    """``compile: true`` and ``torch.compile`` failed on this machine; the message says why."""


def compile_failure(exc: BaseException, step: int) -> CompileError | None:
    """The :class:`CompileError` that ``exc``, raised in (1-based) ``step`` of a compiled model,
    stands for; None when it is not torch.compile's own (a model's error stays as it is)."""
    if not type(exc).__module__.startswith(_COMPILER_MODULES):
        return None
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return CompileError(
        f"compile: true failed at step {step} ({type(exc).__name__}: {first}); "
        "torch.compile needs a working C++ compiler on CPU (Triton on CUDA). "
        "Install one, or set compile: false"
    )
