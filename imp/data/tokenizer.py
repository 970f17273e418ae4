"""Text tokenizers, chosen by name from a dataset's config (`datasets.<name>.tokenizer`).

  tokenizer="byte"                                            (the default; no vocabulary file)
  tokenizer=dict(name="sentencepiece", model_file="spm.model")

Every tokenizer maps text to int32 [length] with 0 as padding (the model masks id 0) and an
end-of-text id after the last token when it fits. `vocab_size` bounds the ids, and must not
exceed the model's `text_vocab_size`.

Byte ids: 0 is padding, 1 is end-of-text, byte b is b + 2 (vocabulary 258).
SentencePiece ids: the model's piece id + 1 (so id 0 stays padding); end-of-text is the
model's own eos piece (+ 1), when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from imp import paths


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str, length: int) -> np.ndarray: ...

  def decode(self, ids: np.ndarray) -> str: ...


def _fixed_length(ids: list[int], eos: int | None, length: int) -> np.ndarray:
  """Truncates to leave room for `eos` (when not None), appends it, zero-pads to `length`."""
  if eos is not None:
    ids = ids[: length - 1] + [eos]
  out = np.zeros((length,), np.int32)
  out[: min(len(ids), length)] = ids[:length]
  return out


class ByteTokenizer:
  """UTF-8 bytes as tokens, truncated/padded to a fixed length."""

  pad_id = 0
  eos_id = 1
  offset = 2
  vocab_size = 256 + offset

  def encode(self, text: str, length: int) -> np.ndarray:
    """Returns int32 [length]: bytes, then EOS (if it fits), then padding."""
    return _fixed_length([b + self.offset for b in text.encode("utf-8")], self.eos_id, length)

  def decode(self, ids: np.ndarray) -> str:
    data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file (`pip install sentencepiece`); ids shifted by one."""

  def __init__(self, model_file: str):
    import sentencepiece

    if model_file is None:  # an unset ml_collections placeholder
      raise ValueError("model_file is not set: give the path of a SentencePiece .model file.")
    path = paths.as_path(model_file, key="model_file")
    if not path.is_file():
      raise ValueError(f"{path}: SentencePiece model file not found.")
    try:  # the model's bytes: sentencepiece opens local files only, the path may be a bucket's
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path}: not a SentencePiece model ({e}).") from e
    self.model_file = str(path)
    self.vocab_size = self._sp.get_piece_size() + 1
    eos = self._sp.eos_id()
    self.eos_id = eos + 1 if eos >= 0 else None

  def encode(self, text: str, length: int) -> np.ndarray:
    return _fixed_length([i + 1 for i in self._sp.encode(text)], self.eos_id, length)

  def decode(self, ids: np.ndarray) -> str:
    pieces = [int(i) - 1 for i in ids if int(i) > 0 and int(i) != self.eos_id]
    return self._sp.decode(pieces)

  def __getstate__(self) -> dict[str, Any]:  # grain may pickle sources into workers
    return {"model_file": self.model_file}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["model_file"])


TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
}


def make_tokenizer(spec: str | Mapping[str, Any] | None, key: str) -> Tokenizer:
  """A tokenizer from config: a name, or dict(name=..., **settings); None is "byte"."""
  settings = {"name": spec or "byte"} if spec is None or isinstance(spec, str) else dict(spec)
  name = settings.pop("name", None)
  if name not in TOKENIZERS:
    raise ValueError(f"{key}: tokenizer {name!r} is not known; valid: "
                     f"{', '.join(sorted(TOKENIZERS))}.")
  try:
    return TOKENIZERS[name](**settings)
  except TypeError as e:
    raise ValueError(f"{key}: bad settings for tokenizer {name!r}: {e}") from e
  except ValueError as e:
    raise ValueError(f"{key}: {e}") from e
