"""Verifiable tasks: prompts, reference answers and reward functions.

Built in: ``addition`` (multi-digit addition, "12+34=" → "46"), ``sorting`` (single digits,
"sort 3 1 2:" → "1 2 3"), and ``jsonl`` (a file of ``{"prompt": ..., "answer": ...}`` rows, one
per line). A reward is 1.0 for a correct answer and 0.0 otherwise; answers are parsed leniently
(surrounding text, spaces and thousands separators are ignored).
"""

from __future__ import annotations

import json
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from .aggregation import check_choice

INT_RE = re.compile(r"[-+]?\d[\d,]*")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def parse_int(text: str) -> int | None:
    """First integer in ``text`` ("= 1,234." → 1234), or None."""
    m = INT_RE.search(text)
    return int(m.group().replace(",", "")) if m else None


def parse_int_list(text: str) -> list[int]:
    """All integers in ``text`` in order ("1, 2 and 3" → [1, 2, 3])."""
    return [int(t.replace(",", "")) for t in re.findall(r"[-+]?\d+", text)]


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def match_answer(completion: str, answer: str) -> float:
    """Generic reward: numeric equality when the answer is a number, else normalised exact match
    of the completion's first line."""
    target = parse_int(answer) if INT_RE.fullmatch(answer.strip()) else None
    if target is not None:
        return float(parse_int(completion) == target)
    lines = completion.strip().splitlines()
    return float(bool(lines) and _normalise(lines[0]) == _normalise(answer))


class Task(ABC):
    """Train examples are drawn with a ``torch.Generator`` (its state is the data position);
    ``eval_examples`` is a fixed held-out set disjoint from training."""

    name = "task"

    @abstractmethod
    def sample(self, n: int, gen: torch.Generator) -> list[Example]:
        """``n`` training examples."""

    @abstractmethod
    def eval_examples(self) -> list[Example]:
        """The held-out examples."""

    def reward(self, completion: str, answer: str) -> float:
        return match_answer(completion, answer)


class AdditionTask(Task):
    """a+b with a, b uniform in [0, 10^digits); ``eval_size`` pairs are held out."""

    name = "addition"

    def __init__(self, digits: int = 2, eval_size: int = 200, split_seed: int = 1234):
        if digits < 1:
            raise ValueError(f"digits={digits} must be ≥ 1")
        self.n = 10**digits
        if not 0 < eval_size < self.n**2:
            raise ValueError(f"eval_size={eval_size} must be in [1, {self.n ** 2 - 1}]")
        pairs = random.Random(split_seed).sample(range(self.n**2), eval_size)
        self._eval = [self._example(p) for p in pairs]
        self._held_out = torch.zeros(self.n**2, dtype=torch.bool)
        self._held_out[pairs] = True
        self._train = torch.nonzero(~self._held_out).squeeze(1)

    def _example(self, pair: int) -> Example:
        a, b = divmod(int(pair), self.n)
        return Example(f"{a}+{b}=", str(a + b))

    def sample(self, n: int, gen: torch.Generator) -> list[Example]:
        idx = torch.randint(0, self._train.numel(), (n,), generator=gen)
        return [self._example(self._train[i]) for i in idx]

    def eval_examples(self) -> list[Example]:
        return self._eval

    def reward(self, completion: str, answer: str) -> float:
        return float(parse_int(completion) == int(answer))


class SortingTask(Task):
    """Sort ``length`` single digits ascending; held-out lists are never trained on."""

    name = "sorting"

    def __init__(self, length: int = 4, eval_size: int = 200, split_seed: int = 1234):
        if length < 2:
            raise ValueError(f"length={length} must be ≥ 2")
        self.length = length
        rng = random.Random(split_seed)
        held = set()
        while len(held) < min(eval_size, 10**length // 2):
            held.add(tuple(rng.randrange(10) for _ in range(length)))
        self._held = held
        self._eval = [self._example(t) for t in sorted(held)]

    def _example(self, digits: tuple[int, ...]) -> Example:
        return Example("sort " + " ".join(map(str, digits)) + ":", " ".join(map(str, sorted(digits))))

    def sample(self, n: int, gen: torch.Generator) -> list[Example]:
        out = []
        while len(out) < n:
            t = tuple(torch.randint(0, 10, (self.length,), generator=gen).tolist())
            if t not in self._held:
                out.append(self._example(t))
        return out

    def eval_examples(self) -> list[Example]:
        return self._eval

    def reward(self, completion: str, answer: str) -> float:
        return float(parse_int_list(completion) == parse_int_list(answer))


def read_jsonl(path: str | Path) -> list[Example]:
    """Rows ``{"prompt": str, "answer": str|number}``; a malformed row raises a ValueError naming its line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not {"prompt", "answer"} <= row.keys():
                raise ValueError(f"{path}:{lineno}: expected an object with keys 'prompt' and 'answer'")
            prompt, answer = row["prompt"], row["answer"]
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"{path}:{lineno}: 'prompt' must be a non-empty string")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise ValueError(f"{path}:{lineno}: 'answer' must be a string or a number")
            rows.append(Example(prompt, str(answer)))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


class JsonlTask(Task):
    """User data: training rows from ``path``; held-out rows from ``eval_path`` or, without one,
    the last ``eval_fraction`` of ``path``."""

    name = "jsonl"

    def __init__(self, path: str | Path, eval_path: str | Path | None = None, eval_fraction: float = 0.1):
        rows = read_jsonl(path)
        if eval_path is not None:
            self._train, self._eval = rows, read_jsonl(eval_path)
        else:
            if not 0 < eval_fraction < 1 or len(rows) < 2:
                raise ValueError(f"eval_fraction={eval_fraction} must be in (0, 1) and the file needs ≥ 2 rows")
            n_eval = max(1, round(len(rows) * eval_fraction))
            self._train, self._eval = rows[:-n_eval], rows[-n_eval:]

    def sample(self, n: int, gen: torch.Generator) -> list[Example]:
        return [self._train[i] for i in torch.randint(0, len(self._train), (n,), generator=gen).tolist()]

    def eval_examples(self) -> list[Example]:
        return self._eval


TASKS = ("addition", "sorting", "jsonl")


def make_task(name: str, *, data: str | None = None, eval_data: str | None = None, digits: int = 2,
              eval_size: int = 200) -> Task:
    """Task ``name`` (one of ``TASKS``)."""
    check_choice("task", name, TASKS)
    if name == "jsonl":
        if data is None:
            raise ValueError("task='jsonl' needs data (a .jsonl file of prompt/answer rows)")
        return JsonlTask(data, eval_data)
    if data is not None:
        raise ValueError(f"data is only read by task='jsonl', not task={name!r}")
    return AdditionTask(digits, eval_size) if name == "addition" else SortingTask(eval_size=eval_size)
