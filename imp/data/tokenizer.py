"""Byte-level text tokenizer: needs no vocabulary file and no download.

Ids: 0 is padding, 1 is end-of-text, byte b is b + 2 (vocabulary 258).
"""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
  """UTF-8 bytes as tokens, truncated/padded to a fixed length."""

  pad_id = 0
  eos_id = 1
  offset = 2
  vocab_size = 256 + offset

  def encode(self, text: str, length: int) -> np.ndarray:
    """Returns int32 [length]: bytes, then EOS (if it fits), then padding."""
    ids = [b + self.offset for b in text.encode("utf-8")][: length - 1] + [self.eos_id]
    out = np.zeros((length,), np.int32)
    out[: len(ids)] = ids
    return out

  def decode(self, ids: np.ndarray) -> str:
    data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
    return data.decode("utf-8", errors="replace")
