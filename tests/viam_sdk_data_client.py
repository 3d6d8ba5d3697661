"""Drives Viam's own Python SDK DataClient query, tag and delete calls against a server.

Run it with the interpreter that has ``viam-sdk`` installed (the ``viam_python`` fixture),
never inside syncd's interpreter: the SDK registers the same protobuf names as syncd.

stdin, one JSON plan::

    {"host": "127.0.0.1", "port": 1234, "api_key_id": "...", "api_key": "...",
     "calls": [{"method": "tags_by_filter", "kwargs": {...}}, ...]}

With an API key the client is a ``ViamClient`` (``create_from_dial_options`` with
``app_url`` pointing at the server, plain HTTP/2) and its ``data_client``, as a user would
write it; without one, a bare ``DataClient(Channel(host, port), {})``.

In kwargs, ``{"$filter": {...}}`` is ``viam.utils.create_filter(**...)``,
``{"$tags_filter": {"type": NAME, "tags": [...]}}`` a Filter with only that TagsFilter,
``{"$binary_id": {...}}`` a BinaryID, ``{"$delete_filter": {...}}`` a
DeleteTabularFilter, ``{"$order": NAME}`` an Order value and ``{"$datetime": iso}`` a
datetime. Method ``page_binary`` / ``page_tabular`` runs the SDK's documented paging loop
(pass ``last`` back until a page is empty) and returns every page.

stdout, one JSON object: ``{"results": [...]}``, one per call: the result made JSON
(BinaryData and CaptureMetadata as protobuf JSON with field names, bytes in base64,
datetimes in ISO form) or ``{"error": {"status": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import datetime
from typing import Any

from google.protobuf import wrappers_pb2  # noqa: F401  (Any values in JSON: StringValue)
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from viam.app.data_client import DataClient
from viam.app.viam_client import ViamClient
from viam.proto.app.data import (
    BinaryData,
    BinaryID,
    DeleteTabularFilter,
    Filter,
    Order,
    TagsFilter,
    TagsFilterType,
)
from viam.rpc.dial import Credentials, DialOptions
from viam.utils import create_filter


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$filter":
            return create_filter(**decode(inner))
        if key == "$tags_filter":
            kind = TagsFilterType.Value(inner["type"])
            return Filter(tags_filter=TagsFilter(type=kind, tags=inner.get("tags", [])))
        if key == "$binary_id":
            return BinaryID(**inner)
        if key == "$delete_filter":
            return DeleteTabularFilter(**inner)
        if key == "$order":
            return Order.Value(inner)
        if key == "$datetime":
            return datetime.fromisoformat(inner)
    return {k: decode(v) for k, v in value.items()}


def encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return [encode(v) for v in value]
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, DataClient.TabularData):
        return {
            "data": value.data,
            "metadata": encode(value.metadata),
            "time_requested": value.time_requested.isoformat(),
            "time_received": value.time_received.isoformat(),
        }
    if isinstance(value, Message):
        out = MessageToDict(value, preserving_proto_field_name=True)
        if isinstance(value, BinaryData):
            out["binary"] = base64.b64encode(value.binary).decode()
        return out
    return value


async def page(method: Any, **kwargs: Any) -> list[Any]:
    pages, last = [], None
    while True:
        data, count, last = await method(last=last, **kwargs)
        if not data:
            return pages
        pages.append({"data": encode(data), "count": count, "last": last})
        if len(pages) > 100:
            raise RuntimeError("paging does not end")


async def connect(plan: dict[str, Any]) -> tuple[DataClient, Any]:
    if plan.get("api_key"):
        options = DialOptions(
            auth_entity=plan["api_key_id"],
            credentials=Credentials(type="api-key", payload=plan["api_key"]),
            insecure=True,  # the sink on a base station speaks plain HTTP/2
        )
        client = await ViamClient.create_from_dial_options(
            options, app_url=f"{plan['host']}:{plan['port']}"
        )
        return client.data_client, client.close
    channel = Channel(plan["host"], plan["port"])
    return DataClient(channel, {}), channel.close


async def main() -> None:
    plan = json.load(sys.stdin)
    client, close = await connect(plan)
    results: list[Any] = []
    try:
        for call in plan["calls"]:
            name, kwargs = call["method"], decode(call.get("kwargs", {}))
            try:
                if name in ("page_binary", "page_tabular"):
                    method = getattr(client, name.replace("page_", "") + "_data_by_filter")
                    results.append(await page(method, **kwargs))
                else:
                    results.append(encode(await getattr(client, name)(**kwargs)))
            except GRPCError as exc:
                results.append({"error": {"status": exc.status.name, "message": exc.message}})
            except NotImplementedError as exc:
                results.append({"error": {"status": "NotImplementedError", "message": str(exc)}})
    finally:
        close()
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
