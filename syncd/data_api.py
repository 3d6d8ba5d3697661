"""The sink's DataService: Viam's data query, tag and delete calls, answered from the index.

Serves the twelve ``viam.app.data.v1.DataService`` RPCs that Viam's Python SDK
``DataClient`` makes (``tabular_data_by_filter``, ``binary_data_by_filter``,
``binary_data_by_ids``, ``delete_tabular_data``, ``delete_binary_data_by_filter``,
``delete_binary_data_by_ids``, tag add/remove by ids and by filter, ``tags_by_filter``,
``bounding_box_labels_by_filter``); the other RPCs of Viam's DataService are answered
UNIMPLEMENTED.
The semantics Viam leaves open are those of the index: order and intervals in
:mod:`syncd.sink_index_query`, times and MIME types in :mod:`syncd.sink_index_schema`,
identity fields in :class:`~syncd.sink_index_types.CaptureIdentity`. Here: requests become
:class:`~syncd.sink_index_types.ItemFilter`\\ s, rows become Viam's result messages, and
the blocking work runs in worker threads.

- Paging: ``limit`` 0 means 50. ``last`` is an opaque cursor, set on every non-empty page;
  a page after the final row is empty and keeps the ``last`` it was given. A page of
  binary data with its bytes stops early (never before its first row) once it holds
  :data:`MAX_PAGE_PAYLOAD_BYTES`; its ``last`` continues from there.
- ``count``: with ``count_only``, the number of matches (and no data); otherwise the
  number of rows in the page.
- ``*ByIDs`` calls accept ``binary_data_ids`` and the deprecated ``binary_ids`` (their
  ``file_id`` is matched against the id); with neither: INVALID_ARGUMENT. Unknown ids are
  left out of answers and counts. Tag calls need at least one non-empty tag.
- ``DeleteTabularData``: deletes readings whose ``time_requested`` is before 00:00 UTC of
  (today − (days − 1)), every reading for days = 0, narrowed by the optional filter and
  by ``organization_id`` (as the filter's organization).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from syncd.errors import SyncdError
from syncd.gen.app.data.v1 import data_pb2 as pb
from syncd.gen.app.data.v1.data_grpc import DataServiceBase
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.mapping import timestamp_from_ns, with_dot
from syncd.sink_index import SinkIndex
from syncd.sink_index_types import (
    BinaryRow,
    CaptureIdentity,
    ItemFilter,
    Meta,
    Page,
    TabularRow,
    TagsMode,
    datetime_ns,
    timestamp_ns,
)

log = logging.getLogger("syncd.sink")

MAX_PAGE_PAYLOAD_BYTES = 64 * 1024**2
_SERVICE = "/viam.app.data.v1.DataService/"

# The rest of Viam's DataService (as of SDK 0.85.1). grpclib's own answer to a path it
# does not serve lacks a content-type, which grpclib clients (Viam's Python SDK) report
# as UNKNOWN; these get a proper UNIMPLEMENTED instead.
_NOT_SERVED = (
    "AddBinaryDataToDatasetByIDs",
    "AddBoundingBoxToImageByID",
    "AddSequencesToDataset",
    "ConfigureDatabaseUser",
    "CreateBinaryDataSignedURL",
    "CreateIndex",
    "CreateSavedQuery",
    "CreateSequence",
    "DeleteIndex",
    "DeleteSavedQuery",
    "DeleteSequence",
    "ExportTabularData",
    "GetDatabaseConnection",
    "GetLatestTabularData",
    "GetSavedQuery",
    "GetSequence",
    "GetSequenceBinaryData",
    "ListIndexes",
    "ListSavedQueries",
    "ListSequences",
    "RemoveBinaryDataFromDatasetByIDs",
    "RemoveBoundingBoxFromImageByID",
    "RemoveSequencesFromDataset",
    "SequencesByDatasetID",
    "TabularDataByMQL",
    "TabularDataBySQL",
    "UpdateBoundingBox",
    "UpdateSavedQuery",
    "UpdateSequence",
)

M = TypeVar("M", bound=Message)
Receive = Callable[[Stream[Any, Any], type[M]], Awaitable[M | None]]


# --- requests ----------------------------------------------------------------------------


def item_filter(flt: pb.Filter | None) -> ItemFilter:
    """Viam's Filter as an :class:`ItemFilter` (None: match everything).

    ValueError for a TagsFilterType this sink does not know.
    """
    if flt is None:
        return ItemFilter()
    interval = flt.interval
    tags = flt.tags_filter
    try:
        mode = TagsMode(tags.type)
    except ValueError:
        raise ValueError(f"unknown tags filter type {tags.type}") from None
    return ItemFilter(
        component_name=flt.component_name,
        component_type=flt.component_type,
        method=flt.method,
        robot_name=flt.robot_name,
        robot_id=flt.robot_id,
        part_name=flt.part_name,
        part_id=flt.part_id,
        location_ids=tuple(flt.location_ids),
        organization_ids=tuple(flt.organization_ids),
        mime_types=tuple(flt.mime_type),
        start_ns=timestamp_ns(interval.start) if interval.HasField("start") else None,
        end_ns=timestamp_ns(interval.end) if interval.HasField("end") else None,
        tags_mode=mode,
        tags=tuple(tags.tags),
        bbox_labels=tuple(flt.bbox_labels),
        dataset_id=flt.dataset_id,
    )


def tabular_cutoff_ns(days: int, now: datetime) -> int | None:
    """The time before which DeleteTabularData deletes: 00:00 UTC of today − (days − 1)."""
    if days == 0:
        return None
    midnight = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
    return datetime_ns(midnight - timedelta(days=days - 1))


def delete_tabular_filter(
    organization_id: str, flt: pb.DeleteTabularFilter | None, before_ns: int | None
) -> ItemFilter:
    """What a DeleteTabularDataRequest deletes, as an :class:`ItemFilter`."""
    flt = flt or pb.DeleteTabularFilter()
    tags = item_filter(pb.Filter(tags_filter=flt.tags_filter))
    return ItemFilter(
        component_name=flt.component_name,
        component_type=flt.component_type,
        method=flt.method,
        robot_id=flt.robot_id,
        part_id=flt.part_id,
        location_ids=tuple(flt.location_ids),
        organization_ids=(organization_id,) if organization_id else (),
        end_ns=before_ns,
        tags_mode=tags.tags_mode,
        tags=tags.tags,
    )


def _ids(binary_data_ids: Any, binary_ids: Any, identity: CaptureIdentity) -> list[str]:
    """The ids a request names; a BinaryID of another organization or location names
    nothing here, like an unknown id."""
    if not binary_data_ids and not binary_ids:
        raise ValueError("no binary data ids given (binary_data_ids and binary_ids are empty)")
    owned = (b.file_id for b in binary_ids if identity.owns(b.organization_id, b.location_id))
    return [*binary_data_ids, *owned]


def _tags(tags: Any) -> list[str]:
    if not tags or not all(tags):
        raise ValueError("tags must be a non-empty list of non-empty strings")
    return list(tags)


# --- results -----------------------------------------------------------------------------


def capture_metadata(meta: Meta, identity: CaptureIdentity) -> pb.CaptureMetadata:
    """Viam's CaptureMetadata for an item (identity fields from the sink's config)."""
    cm = pb.CaptureMetadata(
        organization_id=identity.organization_id,
        location_id=identity.location_id,
        robot_name=identity.robot_name,
        robot_id=identity.robot_id,
        part_name=identity.part_name,
        part_id=meta.part_id,
        component_type=meta.component_type,
        component_name=meta.component_name,
        method_name=meta.method_name,
        tags=meta.tags,
        mime_type=meta.mime_type,
    )
    if meta.params:
        for key, value in ds.UploadMetadata.FromString(meta.params).method_parameters.items():
            cm.method_parameters[key].CopyFrom(value)
    return cm


def binary_data(
    row: BinaryRow, identity: CaptureIdentity, payload: bytes | None = None
) -> pb.BinaryData:
    """Viam's BinaryData for a row; ``id`` and ``binary_data_id`` are both the sink's id."""
    md = pb.BinaryMetadata(
        id=row.id,
        binary_data_id=row.id,
        capture_metadata=capture_metadata(row.meta, identity),
        time_requested=timestamp_from_ns(row.time_requested_ns),
        time_received=timestamp_from_ns(row.time_received_ns),
        file_name=row.file_name,
        file_ext=with_dot(row.file_ext),
        dataset_ids=row.dataset_ids,
        file_size_bytes=row.size_bytes,
    )
    if row.annotations:
        md.annotations.MergeFromString(row.annotations)
    return pb.BinaryData(binary=payload or b"", metadata=md)


def tabular_response(
    page: Page[TabularRow], identity: CaptureIdentity
) -> pb.TabularDataByFilterResponse:
    """The response for a page of readings: each distinct CaptureMetadata listed once."""
    response = pb.TabularDataByFilterResponse(count=page.count, last=page.last)
    positions: dict[bytes, int] = {}
    by_meta: dict[int, int] = {}
    for row in page.rows:
        index = by_meta.get(id(row.meta))
        if index is None:
            cm = capture_metadata(row.meta, identity)
            index = positions.setdefault(cm.SerializeToString(deterministic=True), len(positions))
            if index == len(response.metadata):
                response.metadata.append(cm)
            by_meta[id(row.meta)] = index
        data = response.data.add(
            metadata_index=index,
            time_requested=timestamp_from_ns(row.time_requested_ns),
            time_received=timestamp_from_ns(row.time_received_ns),
        )
        data.data.MergeFromString(row.data)
    return response


# --- the service -------------------------------------------------------------------------


class DataService(DataServiceBase):
    """DataService over ``index``.

    ``authorize(stream)`` raises GRPCError for a call without valid credentials;
    ``receive(stream, type)`` reads the one request message (None if there is none);
    ``clock`` gives the time DeleteTabularData counts days from.
    """

    def __init__(
        self,
        index: SinkIndex,
        *,
        authorize: Callable[[Stream[Any, Any]], None],
        receive: Receive[Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self._authorize = authorize
        self._receive = receive
        self._clock = clock

    @property
    def _identity(self) -> CaptureIdentity:
        return self._index.identity

    def __mapping__(self) -> dict[str, Handler]:
        mapping = super().__mapping__()
        for name in _NOT_SERVED:
            cardinality = (
                Cardinality.UNARY_STREAM if name == "ExportTabularData" else Cardinality.UNARY_UNARY
            )
            mapping[_SERVICE + name] = Handler(
                functools.partial(self._not_served, name),
                cardinality,
                empty_pb2.Empty,
                empty_pb2.Empty,
            )
        return mapping

    async def _not_served(self, name: str, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, f"DataService/{name} is not served by syncd's sink")

    async def _unary(
        self, stream: Stream[Any, Any], request_type: type[M], handle: Callable[[M], Message]
    ) -> None:
        """Authorize, read the request, run ``handle`` in a worker thread, answer."""
        rpc = request_type.DESCRIPTOR.name.removesuffix("Request")
        try:
            try:
                self._authorize(stream)
                request = await self._receive(stream, request_type)
                if request is None:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"empty {request_type.__name__}")
                response = await asyncio.to_thread(handle, request)
            except ValueError as exc:
                raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
            except (sqlite3.Error, OSError, SyncdError) as exc:
                log.error("%s failed: %s", rpc, exc)
                raise GRPCError(
                    Status.INTERNAL, f"the sink's index or store failed: {exc}"
                ) from exc
        except GRPCError as exc:
            log.info("%s refused: %s: %s", rpc, exc.status.name, exc.message)
            raise
        await stream.send_message(response)

    # queries

    async def TabularDataByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.TabularDataByFilterRequest, self._tabular_by_filter)

    def _tabular_by_filter(self, request: pb.TabularDataByFilterRequest) -> Message:
        dr = request.data_request
        page = self._index.tabular_page(
            item_filter(dr.filter if dr.HasField("filter") else None),
            limit=dr.limit,
            last=dr.last,
            ascending=dr.sort_order == pb.ORDER_ASCENDING,
            count_only=request.count_only,
        )
        return tabular_response(page, self._identity)

    async def BinaryDataByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.BinaryDataByFilterRequest, self._binary_by_filter)

    def _binary_by_filter(self, request: pb.BinaryDataByFilterRequest) -> Message:
        dr = request.data_request
        flt = item_filter(dr.filter if dr.HasField("filter") else None)
        ascending = dr.sort_order == pb.ORDER_ASCENDING
        last = dr.last
        while True:
            page = self._index.binary_page(
                flt, limit=dr.limit, last=last, ascending=ascending, count_only=request.count_only
            )
            if request.count_only or not request.include_binary:
                data = [binary_data(row, self._identity) for row in page.rows]
                return pb.BinaryDataByFilterResponse(data=data, count=page.count, last=page.last)
            data, last = self._with_payloads(page.rows, last)
            # rows whose files vanished are left out; a page is empty only at the end
            if data or not page.rows:
                return pb.BinaryDataByFilterResponse(data=data, count=len(data), last=last)

    def _with_payloads(self, rows: list[BinaryRow], last: str) -> tuple[list[pb.BinaryData], str]:
        data: list[pb.BinaryData] = []
        total = 0
        for row in rows:
            if data and total + row.size_bytes > MAX_PAGE_PAYLOAD_BYTES:
                break
            payload = self._index.read_payload(row)
            last = row.cursor
            if payload is not None:
                data.append(binary_data(row, self._identity, payload))
                total += len(payload)
        return data, last

    async def BinaryDataByIDs(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.BinaryDataByIDsRequest, self._binary_by_ids)

    def _binary_by_ids(self, request: pb.BinaryDataByIDsRequest) -> Message:
        rows = self._index.binary_by_ids(
            _ids(request.binary_data_ids, request.binary_ids, self._identity)
        )
        data = []
        for row in rows:
            payload = None
            if request.include_binary:
                payload = self._index.read_payload(row)
                if payload is None:
                    continue
            data.append(binary_data(row, self._identity, payload))
        return pb.BinaryDataByIDsResponse(data=data, count=len(data))

    async def TagsByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.TagsByFilterRequest, self._tags_by_filter)

    def _tags_by_filter(self, request: pb.TagsByFilterRequest) -> Message:
        flt = item_filter(request.filter if request.HasField("filter") else None)
        return pb.TagsByFilterResponse(tags=self._index.tags(flt))

    async def BoundingBoxLabelsByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.BoundingBoxLabelsByFilterRequest, self._labels_by_filter)

    def _labels_by_filter(self, request: pb.BoundingBoxLabelsByFilterRequest) -> Message:
        flt = item_filter(request.filter if request.HasField("filter") else None)
        return pb.BoundingBoxLabelsByFilterResponse(labels=self._index.bbox_labels(flt))

    # tags

    async def AddTagsToBinaryDataByIDs(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.AddTagsToBinaryDataByIDsRequest, self._add_tags_by_ids)

    def _add_tags_by_ids(self, request: pb.AddTagsToBinaryDataByIDsRequest) -> Message:
        tags = _tags(request.tags)
        self._index.add_tags(
            _ids(request.binary_data_ids, request.binary_ids, self._identity), tags
        )
        return pb.AddTagsToBinaryDataByIDsResponse()

    async def AddTagsToBinaryDataByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.AddTagsToBinaryDataByFilterRequest, self._add_tags_by_filter)

    def _add_tags_by_filter(self, request: pb.AddTagsToBinaryDataByFilterRequest) -> Message:
        tags = _tags(request.tags)
        flt = item_filter(request.filter if request.HasField("filter") else None)
        self._index.add_tags(flt, tags)
        return pb.AddTagsToBinaryDataByFilterResponse()

    async def RemoveTagsFromBinaryDataByIDs(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.RemoveTagsFromBinaryDataByIDsRequest, self._remove_tags_by_ids)

    def _remove_tags_by_ids(self, request: pb.RemoveTagsFromBinaryDataByIDsRequest) -> Message:
        tags = _tags(request.tags)
        count = self._index.remove_tags(
            _ids(request.binary_data_ids, request.binary_ids, self._identity), tags
        )
        return pb.RemoveTagsFromBinaryDataByIDsResponse(deleted_count=count)

    async def RemoveTagsFromBinaryDataByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(
            stream, pb.RemoveTagsFromBinaryDataByFilterRequest, self._remove_tags_by_filter
        )

    def _remove_tags_by_filter(
        self, request: pb.RemoveTagsFromBinaryDataByFilterRequest
    ) -> Message:
        tags = _tags(request.tags)
        flt = item_filter(request.filter if request.HasField("filter") else None)
        count = self._index.remove_tags(flt, tags)
        return pb.RemoveTagsFromBinaryDataByFilterResponse(deleted_count=count)

    # deletes

    async def DeleteTabularData(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.DeleteTabularDataRequest, self._delete_tabular)

    def _delete_tabular(self, request: pb.DeleteTabularDataRequest) -> Message:
        now = datetime.fromtimestamp(self._clock(), UTC)
        flt = delete_tabular_filter(
            request.organization_id,
            request.filter if request.HasField("filter") else None,
            tabular_cutoff_ns(request.delete_older_than_days, now),
        )
        return pb.DeleteTabularDataResponse(deleted_count=self._index.delete_tabular(flt))

    async def DeleteBinaryDataByFilter(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.DeleteBinaryDataByFilterRequest, self._delete_by_filter)

    def _delete_by_filter(self, request: pb.DeleteBinaryDataByFilterRequest) -> Message:
        flt = item_filter(request.filter if request.HasField("filter") else None)
        return pb.DeleteBinaryDataByFilterResponse(deleted_count=self._index.delete_binary(flt))

    async def DeleteBinaryDataByIDs(self, stream: Stream[Any, Any]) -> None:
        await self._unary(stream, pb.DeleteBinaryDataByIDsRequest, self._delete_by_ids)

    def _delete_by_ids(self, request: pb.DeleteBinaryDataByIDsRequest) -> Message:
        count = self._index.delete_binary(
            _ids(request.binary_data_ids, request.binary_ids, self._identity)
        )
        return pb.DeleteBinaryDataByIDsResponse(deleted_count=count)
