"""The name-bound, tuple-returning, weight-untied wrapper that every format traces.

It does for any checkpoint what ``torchscript=True`` once did in transformers:

* inputs arrive positionally in a recorded order and are bound to the model **by keyword**, so
  segment ids can never land in ``attention_mask`` (the seed's silent bug);
* outputs leave as a tuple in a fixed order (``output_names``) instead of a ``ModelOutput`` dict,
  which ``torch.jit.trace`` cannot return;
* tied parameters are cloned, so the exported graph owns each weight (inference only).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


class ExportWrapper(nn.Module):
    """Binds ``input_ids, attention_mask[, token_type_ids]`` by keyword and returns ``output_names`` as a tuple.

    The signature is explicit (not ``*inputs``) so every format sees named inputs: TorchScript's graph,
    ``torch.export``'s dynamic shapes and ONNX's input names.
    """

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
        super().__init__()
        if input_names[:2] != ("input_ids", "attention_mask") or not set(input_names) <= set(INPUT_ORDER):
            raise ValueError(f"inputs must be {INPUT_ORDER[:2]} [+ token_type_ids], got {input_names}")
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        kwargs: dict[str, torch.Tensor | None] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, return_dict=True)
        return tuple(out[name] for name in self.output_names)


def untie_weights(model: nn.Module) -> list[list[str]]:
    """Give every parameter shared by several names its own copy; return the groups that were tied.

    Asserts afterwards that no two parameter names share storage.
    """
    groups: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        groups[id(param)].append(name)
    tied = [names for names in groups.values() if len(names) > 1]
    for names in tied:
        for name in names[1:]:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            shared = getattr(owner, attr)
            setattr(owner, attr, nn.Parameter(shared.detach().clone(), requires_grad=False))
    pointers: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        other = pointers.setdefault(param.data_ptr(), name)
        assert other == name, f"weights {other} and {name} still share storage after untying"
    return tied
