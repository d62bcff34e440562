"""The tokenizer contract the packing loader relies on.

Tokenizers are small picklable objects (they travel into DataLoader worker
processes); models never do.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class SequenceTokenizer(Protocol):
    """Turns one sequence (str) into token ids, specials included."""

    #: token ids that are special (pooling may exclude them; see the model)
    def encode(self, seq: str) -> np.ndarray:
        """int64 token ids of one sequence, with the model's special tokens added."""
        ...

    def estimate_tokens(self, length: int) -> int:
        """Tokens that :meth:`encode` yields for a sequence of ``length`` letters
        (exact for ESM-2; an upper-bound-ish estimate for BPE). Used to fill
        the token budget before tokenizing."""
        ...


# Optional, looked up with getattr by the packing loader:
#   is_truncated(length) -> bool   the record is cut to a length cap (counted as truncated)
#   unk_id: int                    the unknown token; records containing it are counted
#                                  (run_report.json: records_with_unknown_letters)
