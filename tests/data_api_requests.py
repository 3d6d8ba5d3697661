"""DataService requests shaped exactly as Viam's Python SDK (viam-sdk 0.85.1) builds them.

Each function mirrors the request building of the ``DataClient`` method (or
``viam.utils.create_filter``) of the same name and signature: which fields it sets, and
when. test_data_api_wire checks them against the request bytes captured from the SDK, so
the other tests can drive the sink with SDK-shaped requests from syncd's interpreter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from syncd.gen.app.data.v1 import data_pb2 as pb

BinaryIDs = Sequence[pb.BinaryID] | Sequence[str]


def _timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt)  # naive datetimes are taken as UTC, aware ones converted
    return ts


def create_filter(
    component_name: str | None = None,
    component_type: str | None = None,
    method: str | None = None,
    robot_name: str | None = None,
    robot_id: str | None = None,
    part_name: str | None = None,
    part_id: str | None = None,
    location_ids: list[str] | None = None,
    organization_ids: list[str] | None = None,
    mime_type: list[str] | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    tags: list[str] | None = None,
    bbox_labels: list[str] | None = None,
    dataset_id: str | None = None,
) -> pb.Filter:
    return pb.Filter(
        component_name=component_name or "",
        component_type=component_type or "",
        method=method or "",
        robot_name=robot_name or "",
        robot_id=robot_id or "",
        part_name=part_name or "",
        part_id=part_id or "",
        location_ids=location_ids,
        organization_ids=organization_ids,
        mime_type=mime_type,
        interval=pb.CaptureInterval(start=_timestamp(start_time), end=_timestamp(end_time))
        if start_time or end_time
        else None,
        tags_filter=pb.TagsFilter(tags=tags),
        bbox_labels=bbox_labels,
        dataset_id=dataset_id or "",
    )


def _data_request(
    filter: pb.Filter | None, limit: int | None, sort_order: int | None, last: str | None
) -> pb.DataRequest:
    request = pb.DataRequest(filter=filter)
    if limit:
        request.limit = limit
    if sort_order:
        request.sort_order = sort_order  # type: ignore[assignment]
    if last:
        request.last = last
    return request


def tabular_data_by_filter(
    filter: pb.Filter | None = None,
    limit: int | None = None,
    sort_order: int | None = None,
    last: str | None = None,
    count_only: bool = False,
    include_internal_data: bool = False,
) -> pb.TabularDataByFilterRequest:
    return pb.TabularDataByFilterRequest(
        data_request=_data_request(filter or pb.Filter(), limit, sort_order, last),
        count_only=count_only,
        include_internal_data=include_internal_data,
    )


def binary_data_by_filter(
    filter: pb.Filter | None = None,
    limit: int | None = None,
    sort_order: int | None = None,
    last: str | None = None,
    include_binary_data: bool = True,
    count_only: bool = False,
    include_internal_data: bool = False,
) -> pb.BinaryDataByFilterRequest:
    # no empty Filter substituted here, unlike the other methods
    return pb.BinaryDataByFilterRequest(
        data_request=_data_request(filter, limit, sort_order, last),
        include_binary=include_binary_data,
        count_only=count_only,
        include_internal_data=include_internal_data,
    )


def _by_strings(binary_ids: BinaryIDs) -> bool:
    # the SDK looks at the first element only; an empty list takes the BinaryID branch
    return len(binary_ids) > 0 and isinstance(binary_ids[0], str)


def binary_data_by_ids(
    binary_ids: BinaryIDs, include_binary_data: bool = True
) -> pb.BinaryDataByIDsRequest:
    if _by_strings(binary_ids):
        return pb.BinaryDataByIDsRequest(
            binary_data_ids=binary_ids, include_binary=include_binary_data
        )
    return pb.BinaryDataByIDsRequest(binary_ids=binary_ids, include_binary=include_binary_data)


def delete_tabular_data(
    organization_id: str,
    delete_older_than_days: int,
    filter: pb.DeleteTabularFilter | None = None,
) -> pb.DeleteTabularDataRequest:
    return pb.DeleteTabularDataRequest(
        organization_id=organization_id,
        delete_older_than_days=delete_older_than_days,
        filter=filter,
    )


def delete_binary_data_by_filter(filter: pb.Filter | None) -> pb.DeleteBinaryDataByFilterRequest:
    return pb.DeleteBinaryDataByFilterRequest(filter=filter or pb.Filter())


def delete_binary_data_by_ids(binary_ids: BinaryIDs) -> pb.DeleteBinaryDataByIDsRequest:
    if _by_strings(binary_ids):
        return pb.DeleteBinaryDataByIDsRequest(binary_data_ids=binary_ids)
    return pb.DeleteBinaryDataByIDsRequest(binary_ids=binary_ids)


def add_tags_to_binary_data_by_ids(
    tags: list[str], binary_ids: BinaryIDs
) -> pb.AddTagsToBinaryDataByIDsRequest:
    if _by_strings(binary_ids):
        return pb.AddTagsToBinaryDataByIDsRequest(binary_data_ids=binary_ids, tags=tags)
    return pb.AddTagsToBinaryDataByIDsRequest(binary_ids=binary_ids, tags=tags)


def add_tags_to_binary_data_by_filter(
    tags: list[str], filter: pb.Filter | None = None
) -> pb.AddTagsToBinaryDataByFilterRequest:
    return pb.AddTagsToBinaryDataByFilterRequest(filter=filter or pb.Filter(), tags=tags)


def remove_tags_from_binary_data_by_ids(
    tags: list[str], binary_ids: BinaryIDs
) -> pb.RemoveTagsFromBinaryDataByIDsRequest:
    if _by_strings(binary_ids):
        return pb.RemoveTagsFromBinaryDataByIDsRequest(binary_data_ids=binary_ids, tags=tags)
    return pb.RemoveTagsFromBinaryDataByIDsRequest(binary_ids=binary_ids, tags=tags)


def remove_tags_from_binary_data_by_filter(
    tags: list[str], filter: pb.Filter | None = None
) -> pb.RemoveTagsFromBinaryDataByFilterRequest:
    return pb.RemoveTagsFromBinaryDataByFilterRequest(filter=filter or pb.Filter(), tags=tags)


def tags_by_filter(filter: pb.Filter | None = None) -> pb.TagsByFilterRequest:
    return pb.TagsByFilterRequest(filter=filter or pb.Filter())


def bounding_box_labels_by_filter(
    filter: pb.Filter | None = None,
) -> pb.BoundingBoxLabelsByFilterRequest:
    return pb.BoundingBoxLabelsByFilterRequest(filter=filter or pb.Filter())
