"""The MLflow spool's events: one frozen dataclass per kind, and their JSON form in ``spool.jsonl``.

On disk an event is one JSON object whose ``k`` names its kind, with short keys (``m`` the metrics, ``p`` the
params, ``t`` a time in ms, ``d`` the data splits): the format every version wrote, so a spool an earlier
version left behind is read, and sent, by this one. :func:`decode` turns such an object into its event, or
raises :class:`~tracked_train.trackers.spool.BadEvent` when it cannot be one (an unknown kind, a missing or
malformed field): the sink sets that line aside in ``quarantine.jsonl`` instead of retrying it forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from ..trackers.spool import BadEvent

PARAM_MAX = 6000  # MLflow's limit on a param value (tag values are cut to it too)
Types = type | tuple[type, ...]
# data.DatasetInfo, as an inputs event carries each split
SPLIT_FIELDS: tuple[tuple[str, type], ...] = (("context", str), ("name", str), ("source_type", str),
                                              ("source", str), ("digest", str), ("lines", int), ("chars", int))


def now_ms() -> int:
    """The time now, as events carry it (milliseconds since the epoch, MLflow's unit)."""
    return int(time.time() * 1000)


def _check(e: dict[str, Any], kind: str, required: tuple[tuple[str, Types], ...],
           optional: tuple[tuple[str, Types], ...] = ()) -> None:
    """Raise :class:`BadEvent` unless ``e`` has the ``required`` fields, and every field it has is of its type."""
    missing = [name for name, _ in required if name not in e]
    if missing:
        raise BadEvent(f"{kind} event without {', '.join(missing)}")
    wrong = [name for name, types in (*required, *optional) if name in e and not isinstance(e[name], types)]
    if wrong:
        raise BadEvent(f"{kind} event with a malformed {', '.join(wrong)}")
    # A metric that is not a number would be refused on every retry (``m``, where a kind has it, is a dict here).
    if any(name == "m" for name, _ in (*required, *optional)) and not all(
            isinstance(v, (int, float)) for v in e.get("m", {}).values()):
        raise BadEvent(f"{kind} event with a metric value that is not a number")


class Event:
    """One spooled event; ``kind`` is its ``k`` on disk."""

    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Event:
        raise NotImplementedError


@dataclass(frozen=True)
class Create(Event):
    """Create the run (the server was down at start): the sender creates it when the server answers."""

    kind: ClassVar[str] = "create"
    time_ms: int
    tags: dict[str, str]
    experiment: str | None = None  # None: the sink's (the one the spool records)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.kind, "t": self.time_ms}
        if self.experiment is not None:
            out["experiment_name"] = self.experiment
        return {**out, "tags": self.tags}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Create:
        _check(e, cls.kind, (("t", int), ("tags", dict)))
        return cls(e["t"], e["tags"], e.get("experiment_name"))


@dataclass(frozen=True)
class Params(Event):
    kind: ClassVar[str] = "params"
    values: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "p": self.values}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Params:
        _check(e, cls.kind, (("p", dict),))
        return cls(e["p"])


@dataclass(frozen=True)
class Metrics(Event):
    kind: ClassVar[str] = "metrics"
    step: int
    time_ms: int  # each point carries its own timestamp: a resend after a lost acknowledgement is harmless
    values: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "step": self.step, "t": self.time_ms, "m": self.values}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Metrics:
        _check(e, cls.kind, (("step", int), ("t", int), ("m", dict)))
        return cls(e["step"], e["t"], e["m"])


@dataclass(frozen=True)
class Tags(Event):
    kind: ClassVar[str] = "tags"
    values: dict[str, str]

    @classmethod
    def of(cls, tags: dict[str, Any]) -> Tags:
        """Tags whose values are strings MLflow takes (cut to its limit)."""
        return cls({k: str(v)[:PARAM_MAX] for k, v in tags.items()})

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "tags": self.values}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Tags:
        _check(e, cls.kind, (("tags", dict),))
        return cls(e["tags"])


@dataclass(frozen=True)
class Inputs(Event):
    """The data splits, as MLflow dataset inputs; each split is a ``data.DatasetInfo`` as a dict."""

    kind: ClassVar[str] = "inputs"
    splits: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "d": self.splits}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Inputs:
        _check(e, cls.kind, (("d", list),))
        # A split missing a field would fail at the server call on every retry: quarantine it here instead.
        if not all(isinstance(d, dict) and all(isinstance(d.get(f), t) for f, t in SPLIT_FIELDS) for d in e["d"]):
            raise BadEvent("inputs event with a malformed data split")
        return cls(e["d"])


@dataclass(frozen=True)
class Artifact(Event):
    """Upload the snapshot ``src`` (relative to the run folder) as the run's artifact ``dst``."""

    kind: ClassVar[str] = "artifact"
    src: str
    dst: str

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "src": self.src, "dst": self.dst}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Artifact:
        _check(e, cls.kind, (("src", str), ("dst", str)))
        return cls(e["src"], e["dst"])


@dataclass(frozen=True)
class Model(Event):
    """Log the checkpoint snapshot ``src`` as a Logged Model: the best one (with the best values as its
    metrics, and a Model Registry name), or a kept periodic checkpoint (``checkpoint``: its folder's name,
    with the metrics of its step, their timestamp and the validation split they were measured on)."""

    kind: ClassVar[str] = "model"
    src: str
    step: int = 0
    metrics: dict[str, float] | None = None
    register: str | None = None
    checkpoint: str | None = None
    time_ms: int | None = None
    dataset: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # A field that is None is left out (register alone is written, as null): readers take a missing one
        # for None, and a null checkpoint or time would not even pass from_json.
        out: dict[str, Any] = {"k": self.kind, "src": self.src, "step": self.step}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.metrics is not None:
            out["m"] = self.metrics
        out["register"] = self.register
        if self.time_ms is not None:
            out["t"] = self.time_ms
        if self.dataset is not None:
            out["dataset"] = self.dataset
        return out

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Model:
        _check(e, cls.kind, (("src", str),), (("step", int), ("m", dict), ("register", (str, type(None))),
                                              ("checkpoint", str), ("t", int), ("dataset", (dict, type(None)))))
        return cls(e["src"], e.get("step", 0), e.get("m"), e.get("register"), e.get("checkpoint"), e.get("t"),
                   e.get("dataset"))


@dataclass(frozen=True)
class Figure(Event):
    """The loss curve of the spool's metrics, drawn when the event is sent."""

    kind: ClassVar[str] = "figure"
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "title": self.title}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Figure:
        return cls(e.get("title", ""))


@dataclass(frozen=True)
class Delete(Event):
    """Delete the run: the attempt that created it never trained."""

    kind: ClassVar[str] = "delete"

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> Delete:
        return cls()


@dataclass(frozen=True)
class End(Event):
    """End the run with ``status`` (FINISHED, FAILED, KILLED) at ``time_ms``."""

    kind: ClassVar[str] = "end"
    status: str
    time_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"k": self.kind, "status": self.status, "t": self.time_ms}

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> End:
        _check(e, cls.kind, (("status", str), ("t", int)))
        return cls(e["status"], e["t"])


KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in (Create, Params, Metrics, Tags, Inputs, Artifact, Model,
                                                             Figure, Delete, End)}


def decode(e: dict[str, Any]) -> Event:
    """The event a spool line's JSON object stands for; :class:`BadEvent` when it stands for none."""
    kind = e.get("k")
    cls = KINDS.get(kind) if isinstance(kind, str) else None  # a list or a dict is no kind either
    if cls is None:
        raise BadEvent(f"unknown event kind {kind!r}")
    return cls.from_json(e)


def readable(events: Iterable[dict[str, Any]]) -> Iterator[Event]:
    """The events of ``events`` that can be decoded (the others are the sink's to quarantine)."""
    for e in events:
        try:
            yield decode(e)
        except BadEvent:
            continue
