"""The connection to a DataSyncService: channel, TLS, API-key auth and the three uploads.

This module is the uploader's one seam to the network (:class:`UploadTransport`): tests
and benchmarks can put any object with the same three methods in its place. It knows
nothing of the outbox or of retry schedules; it makes one call and raises on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import ssl
import sys
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from syncd import mapping
from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.proto.rpc.v1 import auth_grpc, auth_pb2

log = logging.getLogger("syncd.cloud")

ChunkSource = Callable[[], AsyncIterator[bytes | memoryview]]
"""Makes a fresh iterator over an upload's bytes, so a retried call can start over."""


class UploadTransport(Protocol):
    """What the uploader needs from the network: send one upload, get the server's id."""

    async def data_capture_upload(self, request: ds.DataCaptureUploadRequest | bytes) -> str:
        """``request`` may be a message or its serialized bytes."""
        ...

    async def file_upload(self, metadata: ds.UploadMetadata, chunks: ChunkSource) -> str: ...

    async def streaming_upload(
        self, metadata: ds.DataCaptureUploadMetadata, chunks: ChunkSource
    ) -> str: ...

    async def close(self) -> None: ...


def make_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """System CA verification (plus an optional extra CA), TLS 1.2+, ALPN h2."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


class CloudClient:
    """A grpclib channel to a DataSyncService, authenticating with an API key if given.

    ``connect_timeout_s`` (default: ``call_timeout_s``) bounds opening the connection.
    ``call_timeout_s`` bounds how long a call may go without progress: no message sent
    or received, and none of its bytes taken by the server (see :func:`_progress`); then
    it fails with TimeoutError. So a server that never answers frees the caller, and a
    slow link or a slow server, which take seconds to drain what the kernel and HTTP/2
    buffered, put no ceiling on how long an upload may take. The server's flow-control updates come every half window (2 MB
    for grpclib's 4 MB), so the timeout must exceed the time it needs to take that much.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = True,
        ca_file: Path | None = None,
        api_key_id: str | None = None,
        api_key: str | None = None,
        call_timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        self._channel = Channel(host, port, ssl=make_ssl_context(ca_file) if tls else None)
        self._sync = data_sync_grpc.DataSyncServiceStub(self._channel)
        self._auth = auth_grpc.AuthServiceStub(self._channel)
        self._key_id = api_key_id
        self._key = api_key
        self._timeout = call_timeout_s
        self._connect_timeout = connect_timeout_s or call_timeout_s
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self.address = f"{host}:{port}"

    async def close(self) -> None:
        self._channel.close()

    # --- auth ---------------------------------------------------------------------

    async def _metadata(self, renew_from: str | None = None) -> dict[str, str] | None:
        """The bearer metadata, authenticating first (or again) when needed."""
        if self._key is None:
            return None
        async with self._auth_lock:
            # Renew only if nobody else renewed since the caller saw the token fail.
            if self._token is None or self._token == renew_from:
                request = auth_pb2.AuthenticateRequest(
                    entity=self._key_id or "",
                    credentials=auth_pb2.Credentials(type="api-key", payload=self._key),
                )
                response = await self._stream(self._auth.Authenticate, None, request, None, None)
                self._token = response.access_token
                log.debug("authenticated with API key %s", self._key_id)
            return {"authorization": f"Bearer {self._token}"}

    async def _call(self, method, first, chunks: ChunkSource | None = None, wrap=None):
        """One call (see :meth:`_stream`), with the bearer metadata when there is a key:
        on UNAUTHENTICATED the token is renewed once and the call made again."""
        if self._key is None:
            return await self._stream(method, None, first, chunks, wrap)
        metadata = await self._metadata()
        try:
            return await self._stream(method, metadata, first, chunks, wrap)
        except GRPCError as exc:
            if exc.status is not Status.UNAUTHENTICATED:
                raise
            assert metadata is not None
            stale = metadata["authorization"].removeprefix("Bearer ")
            log.info("access token refused by the server; authenticating again")
            metadata = await self._metadata(renew_from=stale)
            return await self._stream(method, metadata, first, chunks, wrap)

    # --- uploads ------------------------------------------------------------------

    async def data_capture_upload(self, request: ds.DataCaptureUploadRequest | bytes) -> str:
        # Not grpclib's unary call: its timeout bounds the whole call, which a request of
        # a few MB over a slow link can outlast however well it moves.
        response = await self._call(self._sync.DataCaptureUpload, request)
        return response.binary_data_id or response.file_id

    async def file_upload(self, metadata: ds.UploadMetadata, chunks: ChunkSource) -> str:
        first = mapping.file_metadata_request(metadata)
        response = await self._call(
            self._sync.FileUpload, first, chunks, mapping.file_chunk_request
        )
        return response.binary_data_id or response.file_id

    async def streaming_upload(
        self, metadata: ds.DataCaptureUploadMetadata, chunks: ChunkSource
    ) -> str:
        first = ds.StreamingDataCaptureUploadRequest(metadata=metadata)
        response = await self._call(
            self._sync.StreamingDataCaptureUpload, first, chunks, mapping.streaming_chunk_request
        )
        return response.binary_data_id or response.file_id

    async def _stream(self, method, metadata, first, chunks: ChunkSource | None, wrap):
        """One call: the first message (the only one of a unary call), one message per
        chunk, the last of them ending the stream, then the answer and the status."""
        guard: _StallGuard | None = None
        try:
            async with asyncio.timeout(None) as deadline, method.open(metadata=metadata) as stream:
                guard = _StallGuard(stream, deadline, self._timeout, self._connect_timeout)
                try:
                    response = await self._exchange(stream, guard, first, chunks, wrap)
                finally:
                    guard.close()
        except TimeoutError:
            if guard is not None and guard.expired is not None:
                raise guard.expired from None
            raise
        if response is None:  # the server closed with OK but without a message
            raise GRPCError(Status.UNKNOWN, "server sent no response")
        return response

    @staticmethod
    async def _exchange(stream, guard: _StallGuard, first, chunks: ChunkSource | None, wrap):
        # Messages are framed here and written together up to COALESCE_BYTES: a small
        # file's metadata and content go out in one HTTP/2 frame, with the end of the
        # stream, instead of three (each a write and a frame for both sides to handle).
        first = first if isinstance(first, bytes) else first.SerializeToString()
        pending: list[bytes] = [grpc_prefix(first), first]
        pending_bytes = len(first)
        if pending_bytes >= COALESCE_BYTES:
            # A large request (a tabular batch) is not copied into a join: its prefix goes
            # in a frame of its own, and a join of one piece is that piece.
            await send_framed(stream, pending.pop(0), end=False)
        if chunks is not None:
            async for chunk in chunks():
                guard.stepped()
                if pending_bytes >= COALESCE_BYTES:
                    # waits for HTTP/2 flow control, which bounds memory
                    await send_framed(stream, b"".join(pending), end=False)
                    guard.stepped()
                    pending.clear()
                    pending_bytes = 0
                message = wrap(chunk)
                pending += (grpc_prefix(message), message)
                pending_bytes += len(message)
        await send_framed(stream, b"".join(pending), end=True)
        guard.stepped()
        response = await stream.recv_message()
        guard.stepped()
        # the status, here rather than unbounded in the stream's __aexit__
        await stream.recv_trailing_metadata()
        return response


COALESCE_BYTES = 64 * 1024
"""Messages smaller than this together are sent in one write."""


def grpc_prefix(message: bytes) -> bytes:
    """What precedes a serialized message on a gRPC stream: not compressed, its length."""
    return b"\0" + len(message).to_bytes(4, "big")


async def send_framed(stream, data: bytes, *, end: bool) -> None:
    """Send ``data``, one or more messages each after its :func:`grpc_prefix`, on a grpclib
    client stream (ending it if ``end``). grpclib frames each message it sends and
    writes it on its own; this is its ``send_message`` for several at once, so it keeps
    the stream's own state as ``send_message`` does (grpclib is pinned below 0.5)."""
    if not stream._send_request_done:
        await stream.send_request()
    if stream._end_done:
        raise RuntimeError("stream already ended")
    with stream._wrapper:
        await stream._stream.send_data(data, end_stream=end)
    stream._send_message_done = True
    if end:
        stream._end_done = True


class _StallGuard:
    """Ends a call that made no progress for ``timeout`` seconds, or that got no
    connection within ``connect_timeout``. Progress is a message sent or received, or any
    change in :func:`_progress`. One timer per call, looking every ``timeout`` seconds
    (sooner while connecting), costs less than a timer per message."""

    def __init__(
        self, stream: object, deadline: asyncio.Timeout, timeout: float, connect_timeout: float
    ) -> None:
        self._stream = stream
        self._deadline = deadline
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._connect_by = self._loop.time() + connect_timeout
        self._connect_timeout = connect_timeout
        self._steps = 0
        self._seen: tuple[int, tuple[int, ...]] | None = None
        self.expired: TimeoutError | None = None
        self._timer = self._loop.call_later(min(timeout, connect_timeout), self._check)

    def stepped(self) -> None:
        self._steps += 1

    def close(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        progress = _progress(self._stream)
        if progress is None:  # not connected yet
            left = self._connect_by - self._loop.time()
            if left > 0:
                self._timer = self._loop.call_later(min(self._timeout, left), self._check)
                return
            self.expired = TimeoutError(f"no connection for {self._connect_timeout:g} s")
        else:
            seen = (self._steps, progress)
            if seen != self._seen:
                self._seen = seen
                self._timer = self._loop.call_later(self._timeout, self._check)
                return
            self.expired = TimeoutError(f"no progress for {self._timeout:g} s")
        self._deadline.reschedule(self._loop.time())  # asyncio cancels the call now


def _progress(stream: object) -> tuple[int, ...] | None:
    """Numbers that change while a call's connection moves bytes to the server: the
    kernel's queue of bytes the peer has not acknowledged, the transport's write buffer,
    and the HTTP/2 send windows the server reopens as it reads. None before the call has
    a connection (or if grpclib's internals moved: then every step simply times out
    after ``call_timeout_s``, as if nothing moved)."""
    h2_stream = getattr(stream, "_stream", None)  # grpclib's protocol.Stream, once sent
    if h2_stream is None:
        return None
    try:
        transport = h2_stream._transport
        h2 = h2_stream._h2_connection
        numbers = [transport.get_write_buffer_size(), h2.outbound_flow_control_window]
        with contextlib.suppress(Exception):  # the stream's own window, while it is open
            numbers.append(h2.local_flow_control_window(h2_stream.id))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                numbers.append(int.from_bytes(raw, sys.byteorder, signed=True))
        return tuple(numbers)
    except Exception:
        return None
