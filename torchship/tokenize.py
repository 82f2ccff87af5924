"""Tokenization for the runtime: ``tokenizers`` only, with torchship's own padding and truncation.

The checkpoint's ``tokenizer.json`` may carry its own padding (all-MiniLM-L6-v2 pads every text to 128)
and truncation; both are switched off here, because padding is the bucket dispatcher's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer

from .errors import InputError, SequenceTooLongError

TextInput = str | tuple[str, str]
# What makes a text blank: Python's whitespace (str.isspace) and ECMAScript's (JSON Schema's \s), together, so the
# server's OpenAPI pattern (NON_BLANK) and this check agree on every character
BLANK = (
    "\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000\ufeff")
)
NON_BLANK = "[^" + "".join(f"\\u{ord(c):04x}" for c in BLANK) + "]"  # a regex both Python and ECMAScript read alike


def is_blank(text: str) -> bool:
    return all(c in BLANK for c in text)


DIRECTIONS = ("right", "left")


@dataclass
class Encoded:
    """Unpadded token ids per text, in input order."""

    @classmethod
    def of(cls, encodings: list[Encoding]) -> Encoded:
        return cls(
            ids=[np.asarray(e.ids, dtype=np.int64) for e in encodings],
            type_ids=[np.asarray(e.type_ids, dtype=np.int64) for e in encodings],
            offsets=[list(e.offsets) for e in encodings],
            truncated=[False] * len(encodings),
            special=[list(e.special_tokens_mask) for e in encodings],
        )

    ids: list[np.ndarray]
    type_ids: list[np.ndarray]
    offsets: list[list[tuple[int, int]]]
    truncated: list[bool]
    special: list[list[int]] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: list[Encoded]) -> Encoded:
        return cls(
            ids=[x for p in parts for x in p.ids],
            type_ids=[x for p in parts for x in p.type_ids],
            offsets=[x for p in parts for x in p.offsets],
            truncated=[x for p in parts for x in p.truncated],
            special=[x for p in parts for x in p.special],
        )

    def select(self, rows: list[int]) -> Encoded:
        return Encoded(
            ids=[self.ids[r] for r in rows],
            type_ids=[self.type_ids[r] for r in rows],
            offsets=[self.offsets[r] for r in rows],
            truncated=[self.truncated[r] for r in rows],
            special=[self.special[r] for r in rows],
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def check_texts(texts: object) -> list[TextInput]:
    """Accept one text, one ``(text, text_pair)``, or a non-empty list of either; name the first bad item."""
    if isinstance(texts, str) or _is_pair(texts):
        items: list[object] = [texts]
    elif isinstance(texts, Sequence):
        items = list(texts)
    else:
        raise InputError(f"expected a string or a list of strings, got {type(texts).__name__}")
    if not items:
        raise InputError("the input list is empty; pass at least one non-empty string")
    out: list[TextInput] = []
    for i, item in enumerate(items):
        if _is_pair(item):
            first, second = item
            if is_blank(first) or is_blank(second):
                raise InputError(f"item {i} is a text pair with an empty side; both texts must be non-empty")
            out.append((first, second))
        elif isinstance(item, str):
            if is_blank(item):
                raise InputError(f"item {i} is an empty string; every text must contain at least one character")
            out.append(item)
        else:
            raise InputError(
                f"item {i} is {type(item).__name__} ({item!r:.40}), not a string; pass str or (str, str) items"
            )
    return out


def _is_pair(item: object) -> TypeGuard[tuple[str, str]]:
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)


class TextEncoder:
    """Encodes texts to unpadded ids; texts over ``max_length`` are truncated (and flagged in
    ``Encoded.truncated``: the caller decides what to say), or, with ``truncation="error"``, refused.

    A call may override the default (``truncation=``) and cut from the left instead (``direction="left"``: keep
    a text's end, as TEI's ``truncation_direction``)."""

    def __init__(self, path: Path, *, max_length: int, truncation: str) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._path = path
        self._truncating: dict[str, Tokenizer] = {}
        self.max_length = max_length
        self.truncation = truncation

    def _cutter(self, direction: str) -> Tokenizer:
        if direction not in DIRECTIONS:
            raise InputError(f"truncation direction {direction!r} is invalid; choose one of: {', '.join(DIRECTIONS)}")
        if direction not in self._truncating:  # built on first use: most servers never cut from the left
            tokenizer = Tokenizer.from_file(str(self._path))
            tokenizer.no_padding()
            tokenizer.enable_truncation(self.max_length, direction=direction)
            self._truncating[direction] = tokenizer
        return self._truncating[direction]

    def encode(self, texts: list[TextInput], *, truncation: str | None = None, direction: str = "right") -> Encoded:
        encodings: list[Encoding] = self.tokenizer.encode_batch(texts)
        too_long = [i for i, enc in enumerate(encodings) if len(enc.ids) > self.max_length]
        if too_long:
            worst = max(len(encodings[i].ids) for i in too_long)
            if (truncation or self.truncation) == "error":
                raise SequenceTooLongError(
                    f"{len(too_long)} text(s) exceed the longest traced length {self.max_length} tokens "
                    f"(item {too_long[0]} has {len(encodings[too_long[0]].ids)}, the longest {worst}); "
                    "shorten them, use truncation='warn' (--truncation warn), or export with a longer bucket"
                )
            cutter = self._cutter(direction)
            for i, enc in zip(too_long, cutter.encode_batch([texts[i] for i in too_long]), strict=True):
                encodings[i] = enc
        encoded = Encoded.of(encodings)
        for i in too_long:
            encoded.truncated[i] = True
        return encoded

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def pad_rows(
    encoded: Encoded, rows: list[int], bucket: int, *, input_names: tuple[str, ...], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad ``rows`` of ``encoded`` to ``bucket`` tokens -> one (rows, bucket) int64 tensor per input name."""
    ids = np.full((len(rows), bucket), pad_token_id, dtype=np.int64)  # (batch, bucket)
    mask = np.zeros((len(rows), bucket), dtype=np.int64)
    types = np.zeros((len(rows), bucket), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(encoded.ids[r])
        ids[i, :n] = encoded.ids[r]
        mask[i, :n] = 1
        types[i, :n] = encoded.type_ids[r]
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: torch.from_numpy(arrays[name]) for name in input_names}
