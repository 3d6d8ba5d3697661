"""What a query of the sink's index asks and what it answers: plain values, no SQL.

The vocabulary shared by the index (:mod:`syncd.sink_index`), the data API's gRPC service
(:mod:`syncd.data_api`), ``syncd query`` (:mod:`syncd.query_cli`) and the sink's config
(:class:`CaptureIdentity`). Times are nanoseconds since the epoch throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000


# --- what a query asks ----------------------------------------------------------------


class TagsMode(IntEnum):
    """How :attr:`ItemFilter.tags` applies; the values are Viam's ``TagsFilterType``."""

    UNSPECIFIED = 0
    MATCH_BY_OR = 1
    TAGGED = 2
    UNTAGGED = 3


@dataclass(frozen=True)
class ItemFilter:
    """Viam's ``Filter`` in plain values; empty fields constrain nothing.

    Times are nanoseconds since the epoch: ``start_ns`` included, ``end_ns`` excluded.
    """

    component_name: str = ""
    component_type: str = ""
    method: str = ""
    robot_name: str = ""
    robot_id: str = ""
    part_name: str = ""
    part_id: str = ""
    location_ids: tuple[str, ...] = ()
    organization_ids: tuple[str, ...] = ()
    mime_types: tuple[str, ...] = ()
    start_ns: int | None = None
    end_ns: int | None = None
    tags_mode: TagsMode = TagsMode.UNSPECIFIED
    tags: tuple[str, ...] = ()
    bbox_labels: tuple[str, ...] = ()
    dataset_id: str = ""


@dataclass(frozen=True)
class CaptureIdentity:
    """What the sink reports as the organization, location, robot and part name of its data.

    They come from the sink's config, not from uploads. A filter value for one of them
    excludes everything when the sink has a different non-empty value, and constrains
    nothing when the sink's value is empty.
    """

    organization_id: str = ""
    location_id: str = ""
    robot_id: str = ""
    robot_name: str = ""
    part_name: str = ""

    def admits(self, flt: ItemFilter) -> bool:
        """False when ``flt`` names another organization, location, robot or part name."""
        return (
            _same(self.organization_id, flt.organization_ids)
            and _same(self.location_id, flt.location_ids)
            and _same(self.robot_id, [flt.robot_id] if flt.robot_id else [])
            and _same(self.robot_name, [flt.robot_name] if flt.robot_name else [])
            and _same(self.part_name, [flt.part_name] if flt.part_name else [])
        )

    def owns(self, organization_id: str, location_id: str) -> bool:
        """False when a (legacy) BinaryID names another organization or location."""
        org = [organization_id] if organization_id else []
        loc = [location_id] if location_id else []
        return _same(self.organization_id, org) and _same(self.location_id, loc)


def _same(mine: str, wanted: Sequence[str]) -> bool:
    """Whether the sink's value ``mine`` is among ``wanted``; an empty side matches all."""
    return not mine or not wanted or mine in wanted


# --- what a query answers --------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """Where an item came from, as its upload said (tags as they are now)."""

    part_id: str
    component_type: str
    component_name: str
    method_name: str
    mime_type: str
    tags: tuple[str, ...]
    params: bytes | None  # a serialized UploadMetadata holding only method_parameters


@dataclass(frozen=True)
class BinaryRow:
    """One binary reading or uploaded file; ``cursor`` resumes a query after it."""

    id: str
    kind: str
    path: Path
    meta: Meta
    file_name: str
    file_ext: str
    size_bytes: int
    payload_offset: int
    time_requested_ns: int
    time_received_ns: int
    annotations: bytes | None  # a serialized viam.app.data.v1.Annotations
    dataset_ids: tuple[str, ...]
    cursor: str


@dataclass(frozen=True)
class TabularRow:
    """One tabular reading: ``data`` is its serialized google.protobuf.Struct."""

    upload_id: str
    index: int
    meta: Meta
    time_requested_ns: int
    time_received_ns: int
    data: bytes
    cursor: str


R = TypeVar("R", BinaryRow, TabularRow)


@dataclass(frozen=True)
class Page(Generic[R]):
    """A page of results; ``last`` is the cursor of its last row ("" when it has none)."""

    rows: list[R] = field(default_factory=list)
    last: str = ""
    count: int = 0


# --- times -------------------------------------------------------------------------------


def timestamp_ns(ts: Any) -> int:
    """A google.protobuf.Timestamp as nanoseconds since the epoch."""
    return int(ts.seconds) * _NS + int(ts.nanos)


def datetime_ns(dt: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch (microsecond precision)."""
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000
