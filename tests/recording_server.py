"""A real DataSyncService + AuthService on loopback that records every upload, with
knobs to fail calls the way a real server or network does. Test support only."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.proto.rpc.v1 import auth_grpc, auth_pb2
from syncd.sink import listen_socket


@dataclass
class Upload:
    rpc: str
    metadata: ds.UploadMetadata
    readings: list[ds.SensorData] = field(default_factory=list)
    payload: bytes = b""
    sensor_metadata: ds.SensorMetadata | None = None
    chunks: int = 0
    authorization: str | None = None


class RecordingServer(data_sync_grpc.DataSyncServiceBase, auth_grpc.AuthServiceBase):
    """Records uploads in ``uploads``. ``unavailable`` calls fail with UNAVAILABLE first;
    ``reject(upload)`` returning a message fails that upload with INVALID_ARGUMENT.

    ``on_message(upload, index, stream)``, if set, is awaited after each request message
    is received (index 0: the first, with the metadata), before anything is recorded: to
    hold a call (await an event, or forever), slow it down, fail it or cut the connection
    (``cut(stream)``) half-way. ``issued`` lists every access token handed out.
    """

    def __init__(self, api_key_id: str | None = None, api_key: str | None = None) -> None:
        self.uploads: list[Upload] = []
        self.auth_calls: list[auth_pb2.AuthenticateRequest] = []
        self.calls = 0
        self.unavailable = 0
        self.reject: Callable[[Upload], str | None] = lambda upload: None
        self.delay_s = 0.0
        self.on_message: Callable[[Upload, int, object], Awaitable[None]] | None = None
        self.issued: list[str] = []
        self.calls_started = 0  # upload calls whose first message arrived
        self._key_id = api_key_id
        self._key = api_key
        self._tokens: set[str] = set()
        self._server: Server | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", ssl=None) -> RecordingServer:
        """Listen on ``host`` (a free port: ``port``), with TLS if ``ssl`` (an SSLContext)."""
        self._server = Server([self])
        await self._server.start(sock=listen_socket(host, 0), ssl=ssl)
        self.port = self._server._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> RecordingServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __mapping__(self):
        return {
            **data_sync_grpc.DataSyncServiceBase.__mapping__(self),
            **auth_grpc.AuthServiceBase.__mapping__(self),
        }

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    # --- behaviour ---------------------------------------------------------------------

    async def Authenticate(self, stream) -> None:
        request = await stream.recv_message()
        self.auth_calls.append(request)
        if (request.entity, request.credentials.payload) != (self._key_id, self._key):
            raise GRPCError(Status.UNAUTHENTICATED, "bad credentials")
        token = secrets.token_hex(8)
        self._tokens.add(token)
        self.issued.append(token)
        await stream.send_message(auth_pb2.AuthenticateResponse(access_token=token))

    async def _admit(self, stream, upload: Upload) -> None:
        self.calls += 1
        upload.authorization = stream.metadata.get("authorization")
        if self._key is not None:
            token = (upload.authorization or "").removeprefix("Bearer ")
            if token not in self._tokens:
                raise GRPCError(Status.UNAUTHENTICATED, "invalid token")
        if self.unavailable > 0:
            self.unavailable -= 1
            raise GRPCError(Status.UNAVAILABLE, "try again later")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        message = self.reject(upload)
        if message:
            raise GRPCError(Status.INVALID_ARGUMENT, message)
        self.uploads.append(upload)

    async def _heard(self, upload: Upload, index: int, stream) -> None:
        if index == 0:
            self.calls_started += 1
        if self.on_message is not None:
            await self.on_message(upload, index, stream)

    async def DataCaptureUpload(self, stream) -> None:
        request = await stream.recv_message()
        upload = Upload("DataCaptureUpload", request.metadata, list(request.sensor_contents))
        await self._heard(upload, 0, stream)
        await self._admit(stream, upload)
        await stream.send_message(
            ds.DataCaptureUploadResponse(file_id="f", binary_data_id=f"id{len(self.uploads)}")
        )

    async def FileUpload(self, stream) -> None:
        first = await stream.recv_message()
        upload = Upload("FileUpload", first.metadata)
        await self._heard(upload, 0, stream)
        parts = []
        async for message in stream:
            parts.append(message.file_contents.data)
            await self._heard(upload, len(parts), stream)
        upload.payload, upload.chunks = b"".join(parts), len(parts)
        await self._admit(stream, upload)
        await stream.send_message(ds.FileUploadResponse(binary_data_id=f"id{len(self.uploads)}"))

    async def StreamingDataCaptureUpload(self, stream) -> None:
        first = await stream.recv_message()
        upload = Upload("StreamingDataCaptureUpload", first.metadata.upload_metadata)
        upload.sensor_metadata = first.metadata.sensor_metadata
        await self._heard(upload, 0, stream)
        parts = []
        async for message in stream:
            parts.append(message.data)
            await self._heard(upload, len(parts), stream)
        upload.payload, upload.chunks = b"".join(parts), len(parts)
        await self._admit(stream, upload)
        await stream.send_message(
            ds.StreamingDataCaptureUploadResponse(binary_data_id=f"id{len(self.uploads)}")
        )


def cut(stream) -> None:
    """Drop the TCP connection under a server-side stream, as a crashing peer or a
    middlebox would: no trailers, no RST_STREAM, just gone."""
    stream._stream._transport.abort()
