"""Count what a fault did to the data: records lost, duplicated and unexpected.

Jepsen-style bookkeeping. The test knows which records it handed the platform and which of
them the platform acknowledged (a committed file, a publisher confirm); it then reads back
every document and ``_rejects`` entry and counts:

* **lost**: acknowledged keys found nowhere;
* **duplicated**: extra copies of a key (a key found three times counts two);
* **unexpected**: keys found that were never handed to the platform.

Keys handed over but never acknowledged (a publish whose confirm was cut off by the fault)
are *indeterminate*: present once or absent are both correct, but two copies still count as
duplicated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Tally", "tally"]


@dataclass(frozen=True)
class Tally:
    """The outcome of one check; :attr:`ok` when nothing was lost, duplicated or unexpected."""

    acknowledged: int
    indeterminate: int
    found: int
    lost: int
    duplicated: int
    unexpected: int
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, nothing unexpected."""
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0

    def __str__(self) -> str:
        text = (f"acknowledged={self.acknowledged} indeterminate={self.indeterminate} "
                f"found={self.found} lost={self.lost} duplicated={self.duplicated} "
                f"unexpected={self.unexpected}")
        shown = {k: v for k, v in self.examples.items() if v}
        return f"{text} examples={shown}" if shown else text


def tally(acknowledged: Iterable[str], found: Iterable[str],
          indeterminate: Iterable[str] = (), examples: int = 5) -> Tally:
    """Compare the keys found in the store with those handed over.

    :param acknowledged: keys the platform acknowledged; each must be found exactly once.
    :param found: every key read back, once per document or reject holding it.
    :param indeterminate: keys handed over without an acknowledgement: at most once.
    """
    acked = set(acknowledged)
    maybe = set(indeterminate) - acked
    counts = Counter(found)
    lost = sorted(acked - counts.keys())
    dups = sorted(k for k, n in counts.items() if n > 1)
    unexpected = sorted(k for k in counts if k not in acked and k not in maybe)
    return Tally(
        acknowledged=len(acked), indeterminate=len(maybe), found=sum(counts.values()),
        lost=len(lost), duplicated=sum(counts[k] - 1 for k in dups), unexpected=len(unexpected),
        examples={"lost": lost[:examples], "duplicated": dups[:examples],
                  "unexpected": unexpected[:examples]},
    )
