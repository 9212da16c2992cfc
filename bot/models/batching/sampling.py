"""Per-row next-token choice and incremental detokenization.

Sampling mirrors what `generate()` did for the local backend before batching, so a persona's
replies keep their character: repetition penalty over the reply's own tokens (not the prompt),
then greedy (temperature 0) or temperature -> top-k 50 (generate()'s default) -> top-p.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.domain.persona import GenerationParams

#: generate()'s default top-k when sampling; kept so sampled replies read as they did before batching.
TOP_K = 50


def penalize(logits: Any, generated: Sequence[int], penalty: float) -> Any:
    """HF's RepetitionPenaltyLogitsProcessor, applied to the tokens this row generated so far."""
    import torch

    if penalty == 1.0 or not generated:
        return logits
    index = torch.tensor(sorted(set(generated)), dtype=torch.long)
    score = logits.index_select(0, index)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.index_copy(0, index, score)


def next_token(logits: Any, generated: Sequence[int], params: GenerationParams, generator: Any = None) -> int:
    """Choose one token from a row's float logits [vocab]."""
    import torch

    logits = penalize(logits.float(), generated, params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    top_k = min(TOP_K, logits.shape[-1])
    values, indices = torch.topk(logits, top_k)  # sorted, largest first
    if params.top_p < 1.0:
        # Keep the smallest head of the distribution whose mass reaches top_p (at least one token).
        probs = torch.softmax(values, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        values = values.masked_fill(before >= params.top_p, float("-inf"))
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
    return int(indices[choice])


def choose_tokens(logits: Any, generated: Sequence[Sequence[int]], params: Sequence[GenerationParams],
                  generator: Any = None) -> list[int | Exception]:
    """Each row's next token from logits [rows, vocab], or the error that ends that row alone.

    One pass for the whole batch where it can: the NaN check, and the argmax of every greedy row
    without a repetition penalty (the common case); other rows sample one by one.
    """
    import torch

    from bot.errors import ModelError

    invalid = torch.isnan(logits).any(dim=-1).tolist()
    plain = [p.greedy and (p.repetition_penalty == 1.0 or not g) for p, g in zip(params, generated, strict=True)]
    argmax = logits.argmax(dim=-1).tolist() if any(plain) else []
    chosen: list[int | Exception] = []
    for i, (row_params, row_generated) in enumerate(zip(params, generated, strict=True)):
        if invalid[i]:
            chosen.append(ModelError("the model produced invalid (NaN) scores for this reply"))
        elif plain[i]:
            chosen.append(int(argmax[i]))
        else:
            try:
                chosen.append(next_token(logits[i], row_generated, row_params, generator))
            except RuntimeError as exc:  # e.g. inf scores that softmax turns into NaN probabilities
                chosen.append(exc)
    return chosen


class Detokenizer:
    """Turn a growing token list into text deltas, never splitting a multi-byte character.

    Decodes only a short window (the last emitted token onwards), so each step costs O(1), and
    compares against the same window decoded without the new token: byte-level BPE merges across
    token boundaries (leading spaces, UTF-8 pieces) come out right.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.tokens)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character at the very end)."""
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        self._prefix = self._read = len(self.tokens)
        return after[len(before) :]
