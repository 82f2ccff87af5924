"""Post-processing per task: pure tensor code over a batch's raw outputs, no model code.

Each task module exposes ``postprocess(batch: Batch, **options) -> list[result]`` with one result per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One executed micro-batch: its padded inputs, raw outputs and the rows' real lengths."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    outputs: dict[str, torch.Tensor]
    lengths: list[int]
    rows: list[int]  # positions of these rows in the caller's input
