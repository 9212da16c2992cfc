"""Lexical similarity between a reply and a reference answer, in [0, 1].

Deliberately simple and dependency-free (no embedding model to download, same score everywhere):
- `rouge_l`: ROUGE-L F1 (Lin, 2004): the longest common subsequence of word tokens, as the
  harmonic mean of its precision (LCS / reply length) and recall (LCS / reference length).
  Rewards the same words in the same order; tolerant of inserted words.
- `cosine`: cosine of the two bag-of-words count vectors. Ignores order entirely.
Tokens are lower-cased runs of letters and digits (Unicode-aware), so punctuation and case
do not matter. Lexical scores miss paraphrases: use a `judge` assertion when meaning matters.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a)·len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    cand, ref = tokens(candidate), tokens(reference)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def cosine(candidate: str, reference: str) -> float:
    a, b = Counter(tokens(candidate)), Counter(tokens(reference))
    dot = sum(count * b[word] for word, count in a.items())
    if dot == 0:
        return 0.0
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm


METRICS = {"rouge_l": rouge_l, "cosine": cosine}


def similarity(candidate: str, reference: str, metric: str = "rouge_l") -> float:
    return METRICS[metric](candidate, reference)
