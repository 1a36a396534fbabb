"""Answers of read-only checks, each computed once per distinct question within one admission.

A batch of 10,000 jobs that name one model, one upload or one LoRA asks the same questions 10,000 times
(does the model exist, whose is the upload, is the LoRA trained on this model, how many steps can this
scheduler run); a `Memo` shared by the checks of one request answers each once. It lives as long as the
request: what it learnt is never reused by a later one, whose database may have changed.
"""

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    """`get(key, compute)` is `compute()` the first time `key` is asked, and that same answer after."""

    def __init__(self) -> None:
        self._answers: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The answer to `key`: `compute()`'s result, computed on the first call with that key only.
        `key` must name everything `compute` depends on (a tuple whose first item names the question)."""
        try:
            return self._answers[key]  # type: ignore[no-any-return]
        except KeyError:
            answer = self._answers[key] = compute()
            return answer
