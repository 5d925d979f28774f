"""Evaluation metrics: BrierLM (:mod:`.brier`, :mod:`.brier_calm`, :mod:`.brier_ar`) and codec
reconstruction (:mod:`.reconstruction`). Submodules are imported on demand."""

from __future__ import annotations

__all__: list[str] = []
