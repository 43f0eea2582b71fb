"""Jobs counted a column at a time: what lets `plan` and `validate` go through a million-job
sweep without making a million jobs.

A `Block` is up to 50,000 consecutive combinations of one row of a model's sweep whose
vars and inputs are all `Column`s (rows.fast_maker): a free axis, a constant, or a string
template over them. Its job ids are hashed in one pipeline of C-level maps (no dict, no Python
frame per job); what else is learnt of its jobs comes from each column's distinct values:
counts, estimated costs, the names that vary and whether every input is valid. Where a question
has no answer by columns, `rows()` gives the block's jobs one by one, exactly as the one-by-one
loop would have.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from batchrun.plan.rows import VARIES, CanonicalParts, Column, FastRow

if TYPE_CHECKING:
    from batchrun.plan.grid import JobRow

_DIGEST = operator.methodcaller("digest")
_ID_BYTES = operator.itemgetter(slice(0, 6))  # a job id is the first 12 hex digits of the hash
_AS_INT = functools.partial(int.from_bytes, byteorder="big")  # what int(job_id, 16) gives


class Block:
    """Consecutive combinations of one row, each made `repeat` jobs from position `start` on:
    jobs known new and distinct once the pass has taken their `id_keys()`."""

    def __init__(
        self,
        model_id: str,
        row: FastRow,
        parts: CanonicalParts,
        canonical: Callable[[dict[str, Any]], str],
        combos: list[tuple[Any, ...]],
        repeat: int,
        start: int,
    ) -> None:
        self.model_id = model_id
        self.row = row
        self.parts = parts
        self.canonical = canonical
        self.combos = combos
        self.repeat = repeat
        self.start = start
        self.size = len(combos) * repeat

    @property
    def var_names(self) -> Iterable[str]:
        """The vars of each job, in its dict's order."""
        return self.row.var_columns

    @property
    def input_names(self) -> Iterable[str]:
        """The inputs of each job, in its dict's order."""
        return self.row.input_columns

    def id_keys(self) -> set[int]:
        """The jobs' ids, each as the int of its 12 hex digits (fewer than `size` when two
        are the same)."""
        texts, dynamic = self.parts
        keys: set[int] = set()
        for r in range(self.repeat):
            # What grid's _hash_id hashes: model, canonical JSON, the repeat index above 0.
            pieces = [f"{self.model_id}\n{texts[0]}", *texts[1:]]
            pieces[-1] += f"\n#{r}" if r else ""
            fill = "%s".join(p.replace("%", "%%") for p in pieces).__mod__
            values = [map(enc, self.values(key)) for key, enc in dynamic]
            quoted = self._quoted(dynamic[0][0]) if len(dynamic) == 1 else None
            if quoted is not None:  # the template's JSON string written in: one step a job
                pattern, pick = quoted
                fill = pattern.join(p.replace("%", "%%") for p in pieces).__mod__
                filled: Iterator[str] = map(fill, map(pick, self.combos))
            elif not values:
                filled = itertools.repeat(pieces[0], len(self.combos))
            elif len(values) == 1:
                filled = map(fill, values[0])
            else:
                filled = map(fill, zip(*values, strict=True))
            digests = map(_DIGEST, map(hashlib.sha256, map(str.encode, filled)))
            keys.update(map(_AS_INT, map(_ID_BYTES, digests)))
        return keys

    def values(self, name: str, *, var: bool = False) -> Iterator[Any]:
        """The input (or var) `name` of each combination, in order."""
        column = self._column(name, var)
        combos = self.combos
        if column.constant is not VARIES:
            found: Iterator[Any] = itertools.repeat(column.constant, len(combos))
        elif column.text is not None:
            found = itertools.starmap(column.text, combos)
        else:
            found = map(column.make, combos)
        if column.coerce is None:
            return found
        coerce, kind = self.row.coerce, column.coerce
        return (coerce(v, kind) if type(v) is str else v for v in found)

    def distinct(self, name: str, *, var: bool = False) -> list[Any]:
        """The different values of `values(name)` (the same value of two types is two), the
        first combination's first."""
        if self._column(name, var).constant is not VARIES:
            return [next(self.values(name, var=var))]  # may be a list or dict: not hashed
        values, types = self.values(name, var=var), map(type, self.values(name, var=var))
        return [value for value, _ in dict.fromkeys(zip(values, types, strict=True))]

    def always_text(self, name: str) -> bool:
        """Whether every value of the input `name` is a string filled in from a template."""
        column = self._column(name, False)
        return column.text is not None and column.coerce is None

    def input_counts(self, names: list[str]) -> list[tuple[dict[str, Any], int]]:
        """Each different set of values of these inputs (by value and type), with how many
        combinations have it."""
        constants = {}
        varying = []
        for name in names:
            if self._column(name, False).constant is VARIES:
                varying.append(name)
            else:
                constants[name] = next(self.values(name))  # may be a list or dict
        typed = [zip(self.values(n), map(type, self.values(n)), strict=True) for n in varying]
        counts = Counter(zip(*typed, strict=True)) if varying else {(): len(self.combos)}
        return [
            ({**constants, **{n: v for n, (v, _) in zip(varying, key, strict=True)}}, count)
            for key, count in counts.items()
        ]

    def rows(self) -> Iterator[JobRow]:
        """The block's jobs one by one, as the one-by-one loop yields them."""
        make, canonical_of, model_id = self.row.make, self.canonical, self.model_id
        head, position = f"{model_id}\n", self.start
        for values in self.combos:
            combo_vars, inputs = make(values)
            canonical = canonical_of(inputs)
            identity = head + canonical
            for r in range(self.repeat):
                text = f"{identity}\n#{r}" if r else identity
                jid = hashlib.sha256(text.encode()).hexdigest()[:12]
                # Repeats get their own dicts, as in the one-by-one loop.
                yield (
                    jid,
                    model_id,
                    dict(inputs) if r else inputs,
                    combo_vars,
                    r,
                    position,
                    canonical,
                )
                position += 1

    def _quoted(self, name: str) -> tuple[str, Callable[[tuple[Any, ...]], Any]] | None:
        """The input's JSON string as a %-pattern over some of the values, where it is one."""
        column = self.row.input_columns[name]
        return column.quoted if column.coerce is None else None

    def _column(self, name: str, var: bool) -> Column:
        return (self.row.var_columns if var else self.row.input_columns)[name]
