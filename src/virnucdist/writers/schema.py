"""A task's per-record output: :class:`Column`, :class:`ShardSchema`, and the :class:`Part` it hands the writer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

STR = h5py.string_dtype("utf-8")
_RESERVED = {"rows", "lengths", "bad_rows", "bad_reasons"}


@dataclass(frozen=True, eq=False)
class Column:
    """One output column: ``dtype`` a numpy dtype string ("f4", "i4", "i8", "u1"), ``shape`` per row.

    Columns compare by numpy dtype ("f4" == "<f4" == "float32").
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        np.dtype(self.dtype)  # a bad dtype string fails here

    def _key(self) -> tuple:
        return self.name, np.dtype(self.dtype).str, self.shape

    def __eq__(self, other) -> bool:
        return isinstance(other, Column) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


@dataclass(frozen=True)
class ShardSchema:
    """What a task stores per record.

    ``columns``: exactly one value per record. ``ragged``: a variable number of rows per record.
    ``attrs``: json-able, stored on every shard (the model, its options): shards whose schema
    differs in anything (attrs included) belong to another run. ``finite``: names of float columns
    whose non-finite values make the record a counted skip (``None``: all float columns).
    """

    kind: str
    columns: tuple[Column, ...]
    ragged: tuple[Column, ...] = ()
    attrs: dict = field(default_factory=dict)
    finite: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "ragged", tuple(self.ragged))
        names = [c.name for c in self.columns + self.ragged]
        if len(set(names)) != len(names) or _RESERVED & set(names):
            raise ValueError(f"column names must be unique and not one of {sorted(_RESERVED)}: {names}")
        if self.finite is not None:
            object.__setattr__(self, "finite", tuple(self.finite))
            unknown = set(self.finite) - set(names)
            if unknown:
                raise ValueError(f"finite names unknown columns {sorted(unknown)}")

    @property
    def finite_columns(self) -> tuple[str, ...]:
        if self.finite is not None:
            return self.finite
        return tuple(c.name for c in self.columns + self.ragged if np.dtype(c.dtype).kind == "f")

    def column(self, name: str) -> Column:
        for c in self.columns + self.ragged:
            if c.name == name:
                return c
        raise KeyError(f"no column {name!r} in the {self.kind} shards (have {[c.name for c in self.columns]}, "
                       f"ragged {[c.name for c in self.ragged]})")

    def to_json(self) -> str:
        def cols(cs):
            return [[c.name, np.dtype(c.dtype).str, list(c.shape)] for c in cs]

        return json.dumps({"kind": self.kind, "columns": cols(self.columns), "ragged": cols(self.ragged),
                           "attrs": self.attrs, "finite": None if self.finite is None else list(self.finite)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ShardSchema":
        d = json.loads(text)

        def cols(cs):
            return tuple(Column(n, t, tuple(s)) for n, t, s in cs)

        return cls(d["kind"], cols(d["columns"]), cols(d["ragged"]), d["attrs"],
                   None if d["finite"] is None else tuple(d["finite"]))


@dataclass
class Part:
    """Results for some slots of a window (one packed batch, typically).

    ``slots`` [b]: positions within the window's rows. ``values``: column name -> [b, *shape].
    ``lengths`` [b]: ragged rows per slot; ``ragged``: name -> [sum(lengths), *shape] in this part's
    slot order. ``event``: a ``torch.cuda.Event`` that the writer thread synchronizes before
    reading (the arrays may still be being filled by a non-blocking device->host copy).
    ``skipped``: slot -> reason for records that have no result (e.g. out of memory even alone):
    they are set aside as bad rows with that reason (their values are ignored).
    """

    slots: object
    values: dict
    lengths: object | None = None
    ragged: dict | None = None
    event: object | None = None
    skipped: dict | None = None
