"""Drives Viam's own Python SDK (DataClient) against a DataSyncService server.

Run it with the interpreter that has ``viam-sdk`` installed (the ``viam_python`` fixture),
never inside syncd's interpreter: the SDK registers the same protobuf names as syncd.

stdin, one JSON plan::

    {"host": "127.0.0.1", "port": 1234, "api_key_id": "...", "api_key": "...",
     "calls": [{"method": "file_upload", "kwargs": {...}}, ...]}

In kwargs, ``{"$bytes": "<base64>"}`` becomes bytes, ``{"$datetime": "<iso>"}`` a datetime,
``{"$tuple": [...]}`` a tuple and ``{"$any_string": "..."}`` a google.protobuf.Any holding
a StringValue. stdout, one JSON object: ``{"auth": "none" | "ok" | {"error": ...},
"results": [{"id": "..."} | {"error": {"status": "...", "message": "..."}}, ...]}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import datetime
from typing import Any

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import StringValue
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from viam.app.data_client import DataClient
from viam.proto.rpc.auth import AuthenticateRequest, AuthServiceStub, Credentials


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    if value.keys() == {"$datetime"}:
        return datetime.fromisoformat(value["$datetime"])
    if value.keys() == {"$tuple"}:
        return tuple(decode(v) for v in value["$tuple"])
    if value.keys() == {"$any_string"}:
        packed = AnyProto()
        packed.Pack(StringValue(value=value["$any_string"]))
        return packed
    return {k: decode(v) for k, v in value.items()}


def error(exc: GRPCError) -> dict[str, Any]:
    return {"error": {"status": exc.status.name, "message": exc.message}}


async def main() -> None:
    plan = json.load(sys.stdin)
    channel = Channel(plan["host"], plan["port"])
    out: dict[str, Any] = {"auth": "none", "results": []}
    try:
        metadata: dict[str, str] = {}
        if plan.get("api_key_id"):
            # what ViamClient does: Authenticate without a token, then Bearer on every call
            request = AuthenticateRequest(
                entity=plan["api_key_id"],
                credentials=Credentials(type="api-key", payload=plan["api_key"]),
            )
            try:
                response = await AuthServiceStub(channel).Authenticate(request)
            except GRPCError as exc:
                out["auth"] = error(exc)
            else:
                out["auth"] = "ok"
                metadata = {"authorization": f"Bearer {response.access_token}"}
        client = DataClient(channel, metadata)
        for call in plan["calls"]:
            try:
                result = await getattr(client, call["method"])(**decode(call["kwargs"]))
            except GRPCError as exc:
                out["results"].append(error(exc))
            else:
                out["results"].append({"id": result})
    finally:
        channel.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
