"""The sink: a Viam-compatible DataSyncService + AuthService server that stores uploads.

It serves base stations (``syncd sink``), the daemon's ``cloud.address: embedded`` mode and
the end-to-end tests. What it stores and where is :mod:`syncd.sink_store`'s business. It
also serves Viam's DataService query, tag and delete calls (:mod:`syncd.data_api`) from an
index it keeps of the store (:mod:`syncd.sink_index`).

In-process use::

    async with Sink("/var/lib/syncd/received", host="127.0.0.1", port=0) as sink:
        ...  # clients upload to 127.0.0.1:{sink.port}

``Sink(store, *, host="127.0.0.1", port=0, api_key_id=None, api_key=None,
max_message_bytes=64 MiB, max_upload_bytes=10 GiB, min_free_bytes=64 MiB,
sweep_interval_s=600, identity=None)``:

- ``port=0`` picks a free port; ``sink.port`` tells which once started.
- With ``api_key_id`` and ``api_key`` set, every DataSyncService and DataService call
  needs the metadata ``authorization: Bearer <token>`` with a token from
  ``/proto.rpc.v1.AuthService/Authenticate`` (entity = key id, credentials
  ``{type: "api-key", payload: key}``).
  Tokens are opaque random strings kept in memory; ``revoke_tokens()`` forgets them all.
  Without a key the sink is open: Authenticate hands a token to anyone and data calls
  need none.
- ``max_message_bytes`` bounds one gRPC message (Viam's Python SDK sends a whole file in
  one message); ``max_upload_bytes`` bounds one upload's payload; ``min_free_bytes`` is
  the free space the store always keeps. Beyond any of them: RESOURCE_EXHAUSTED, nothing
  stored.
- ``identity`` (a :class:`~syncd.sink_index_types.CaptureIdentity`) is the organization,
  location, robot and part name the DataService reports and filters by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import signal
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import DecodeError, Message
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from syncd.data_api import DataService
from syncd.errors import ConfigError, StorageLimitError, SyncdError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.app.datasync.v1.data_sync_grpc import DataSyncServiceBase
from syncd.gen.proto.rpc.v1 import auth_pb2
from syncd.gen.proto.rpc.v1.auth_grpc import AuthServiceBase
from syncd.sink_index import SinkIndex
from syncd.sink_index_types import CaptureIdentity
from syncd.sink_store import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    PendingUpload,
    Store,
)
from syncd.sink_store_items import StoredItem

if TYPE_CHECKING:
    from syncd.sink_config import SinkConfig

log = logging.getLogger("syncd.sink")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024**2
API_KEY_CREDENTIALS = "api-key"
_MAX_TOKENS = 10_000
_STOP_TIMEOUT_S = 5.0
_THREAD_WRITE_BYTES = 1024 * 1024  # larger chunks are written off the event loop
_MAX_QUERY_BYTES = 4 * 1024 * 1024  # a DataService request: a filter or a list of ids

M = TypeVar("M", bound=Message)


# --- receiving ------------------------------------------------------------------------


async def _recv(stream: Stream[Any, Any], message_type: type[M], limit: int) -> M | None:
    """The next request message, or None at the end of the stream, at most ``limit`` bytes.

    grpclib has no receive limit: it buffers whatever length a message's 5-byte prefix
    announces (up to 4 GiB). So the sink reads the prefix itself and refuses large
    messages before buffering them.
    """
    h2_stream = stream._stream
    try:
        prefix = await h2_stream.recv_data(5)
        if not prefix:
            return None
        if prefix[0]:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        size = int.from_bytes(prefix[1:5], "big")
        if size > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {size} bytes exceeds the sink's max_message_bytes ({limit})",
            )
        data = await h2_stream.recv_data(size)
    except AssertionError as exc:  # grpclib's way of saying the stream ended mid-message
        raise GRPCError(Status.INVALID_ARGUMENT, "stream ended in the middle of a message") from exc
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"cannot decode {message_type.DESCRIPTOR.name}"
        ) from exc


def _invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


# --- auth -----------------------------------------------------------------------------


class _Auth:
    """API-key check and the in-memory token set (tokens are kept as SHA-256 digests)."""

    def __init__(self, api_key_id: str | None, api_key: str | None) -> None:
        if bool(api_key_id) != bool(api_key):
            raise ConfigError(["api_key_id and api_key must be given together"])
        self._key_id = (api_key_id or "").encode()
        self._key = (api_key or "").encode()
        self._tokens: dict[bytes, None] = {}

    @property
    def required(self) -> bool:
        return bool(self._key)

    def authenticate(self, request: auth_pb2.AuthenticateRequest) -> str:
        if self.required:
            creds = request.credentials
            if creds.type != API_KEY_CREDENTIALS:
                raise GRPCError(
                    Status.UNAUTHENTICATED,
                    f"unsupported credentials type {creds.type!r}; the sink accepts "
                    f"{API_KEY_CREDENTIALS!r}",
                )
            # evaluate both comparisons: no hint which of the two was wrong
            id_ok = hmac.compare_digest(request.entity.encode(), self._key_id)
            key_ok = hmac.compare_digest(creds.payload.encode(), self._key)
            if not (id_ok and key_ok):
                raise GRPCError(Status.UNAUTHENTICATED, "invalid API key id or key")
        token = secrets.token_urlsafe(32)
        self._tokens[_digest(token)] = None
        while len(self._tokens) > _MAX_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        return token

    def check(self, stream: Stream[Any, Any]) -> None:
        if not self.required:
            return
        value = (stream.metadata or {}).get("authorization")
        if value is None:
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "missing 'authorization: Bearer <token>' metadata; get a token from "
                "/proto.rpc.v1.AuthService/Authenticate",
            )
        if not isinstance(value, str) or not value.startswith("Bearer "):
            raise GRPCError(
                Status.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
            )
        # looked up by digest, so the lookup's timing says nothing about stored tokens
        if _digest(value[len("Bearer ") :]) not in self._tokens:
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or revoked token; authenticate again")

    def revoke_all(self) -> None:
        self._tokens.clear()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class _AuthService(AuthServiceBase):
    def __init__(self, auth: _Auth) -> None:
        self._auth = auth

    async def Authenticate(
        self, stream: Stream[auth_pb2.AuthenticateRequest, auth_pb2.AuthenticateResponse]
    ) -> None:
        request = await _recv(stream, auth_pb2.AuthenticateRequest, 64 * 1024)
        if request is None:
            raise _invalid("empty AuthenticateRequest")
        try:
            token = self._auth.authenticate(request)
        except GRPCError:
            log.info("refused authentication from %s", _peer(stream))
            raise
        log.debug("issued a token to %s", _peer(stream))
        await stream.send_message(auth_pb2.AuthenticateResponse(access_token=token))


# --- data sync ------------------------------------------------------------------------


def _peer(stream: Stream[Any, Any]) -> str:
    addr = stream.peer.addr()
    return f"{addr[0]}:{addr[1]}" if addr else "unknown peer"


def _reading_kind(um: ds.UploadMetadata, readings: Sequence[ds.SensorData]) -> str:
    """'binary' or 'tabular' for a DataCaptureUpload, or INVALID_ARGUMENT."""
    if um.type == ds.DATA_TYPE_FILE:
        raise _invalid("DataCaptureUpload cannot carry DATA_TYPE_FILE; use FileUpload")
    if not readings:
        raise _invalid("DataCaptureUpload carries no sensor_contents")
    kinds = {r.WhichOneof("data") for r in readings}
    if None in kinds:
        raise _invalid("a reading in sensor_contents has neither struct nor binary set")
    if len(kinds) > 1:
        raise _invalid("DataCaptureUpload mixes binary and tabular readings")
    kind = "binary" if kinds == {"binary"} else "tabular"
    declared = {ds.DATA_TYPE_BINARY_SENSOR: "binary", ds.DATA_TYPE_TABULAR_SENSOR: "tabular"}
    if um.type in declared and declared[um.type] != kind:
        raise _invalid(
            f"metadata type {ds.DataType.Name(um.type)} does not match the {kind} readings"
        )
    return kind


class _DataSyncService(DataSyncServiceBase):
    def __init__(self, store: Store, auth: _Auth, max_message_bytes: int, index: SinkIndex) -> None:
        self._store = store
        self._auth = auth
        self._limit = max_message_bytes
        self._index = index

    async def DataCaptureUpload(
        self, stream: Stream[ds.DataCaptureUploadRequest, ds.DataCaptureUploadResponse]
    ) -> None:
        with _logged(stream, "DataCaptureUpload"):
            self._auth.check(stream)
            request = await _recv(stream, ds.DataCaptureUploadRequest, self._limit)
            if request is None:
                raise _invalid("empty DataCaptureUploadRequest")
            if not request.HasField("metadata"):
                raise _invalid("DataCaptureUploadRequest has no metadata")
            um = request.metadata
            readings = list(request.sensor_contents)
            kind = _reading_kind(um, readings)
            items: list[StoredItem]
            if kind == "tabular":
                items = [await _in_thread(self._store.put_tabular, um, readings)]
            else:
                # one capture file per binary reading; the reply names the first
                await _in_thread(self._store.ensure_room, sum(len(r.binary) for r in readings))
                items = [await _in_thread(self._store.put_binary, um, r) for r in readings]
            for item in items:
                _log_stored(item)
            await asyncio.to_thread(
                self._index.record, items, readings if kind == "tabular" else None
            )
            first = items[0].id
            await stream.send_message(
                ds.DataCaptureUploadResponse(file_id=first, binary_data_id=first)
            )

    async def FileUpload(self, stream: Stream[ds.FileUploadRequest, ds.FileUploadResponse]) -> None:
        with _logged(stream, "FileUpload"):
            self._auth.check(stream)
            first = await _recv(stream, ds.FileUploadRequest, self._limit)
            um = _first_metadata(first, "FileUploadRequest", "file_contents")
            assert isinstance(um, ds.UploadMetadata)
            if um.type not in (ds.DATA_TYPE_FILE, ds.DATA_TYPE_UNSPECIFIED):
                raise _invalid(
                    f"FileUpload needs type DATA_TYPE_FILE, got {ds.DataType.Name(um.type)}"
                )
            pending = await _begin(self._store.begin_file, um)
            item = await self._receive_payload(
                stream, pending, ds.FileUploadRequest, "file_contents"
            )
            await stream.send_message(
                ds.FileUploadResponse(file_id=item.id, binary_data_id=item.id)
            )

    async def StreamingDataCaptureUpload(
        self,
        stream: Stream[ds.StreamingDataCaptureUploadRequest, ds.StreamingDataCaptureUploadResponse],
    ) -> None:
        with _logged(stream, "StreamingDataCaptureUpload"):
            self._auth.check(stream)
            first = await _recv(stream, ds.StreamingDataCaptureUploadRequest, self._limit)
            meta = _first_metadata(first, "StreamingDataCaptureUploadRequest", "data")
            assert isinstance(meta, ds.DataCaptureUploadMetadata)
            um = meta.upload_metadata
            if um.type not in (ds.DATA_TYPE_BINARY_SENSOR, ds.DATA_TYPE_UNSPECIFIED):
                raise _invalid(
                    "StreamingDataCaptureUpload needs type DATA_TYPE_BINARY_SENSOR, got "
                    f"{ds.DataType.Name(um.type)}"
                )
            sm = meta.sensor_metadata if meta.HasField("sensor_metadata") else None
            pending = await _begin(self._store.begin_binary, um, sm)
            item = await self._receive_payload(
                stream, pending, ds.StreamingDataCaptureUploadRequest, "data"
            )
            await stream.send_message(
                ds.StreamingDataCaptureUploadResponse(file_id=item.id, binary_data_id=item.id)
            )

    async def _receive_payload(
        self, stream: Stream[Any, Any], pending: PendingUpload, message_type: type[M], field: str
    ) -> StoredItem:
        """Write every chunk after the metadata straight to the pending file, then commit."""
        commit: asyncio.Future[StoredItem] | None = None
        try:
            while (message := await _recv(stream, message_type, self._limit)) is not None:
                which = message.WhichOneof("upload_packet")
                if which == "metadata":
                    raise _invalid("metadata sent twice: only the first message may carry it")
                if which != field:
                    raise _invalid(f"a message after the metadata has no {field}")
                chunk = getattr(message, field)
                data = chunk if field == "data" else chunk.data
                if len(data) >= _THREAD_WRITE_BYTES:
                    await _in_thread(pending.write, data)  # e.g. the SDK's one big message
                else:
                    pending.write(data)
            # the commit finishes even if the call is cancelled meanwhile: once it is
            # scheduled, the pending upload is the commit's (an abort() racing it would
            # make it fail with "already aborted", unseen)
            commit = asyncio.ensure_future(_in_thread(pending.commit))
            item = await asyncio.shield(commit)
        finally:
            if commit is None:
                pending.abort()
            elif not commit.done():
                commit.add_done_callback(_committed_after_cancel)
        _log_stored(item)
        await asyncio.to_thread(self._index.record, [item])
        return item


def _committed_after_cancel(commit: asyncio.Future[StoredItem]) -> None:
    """The end of a commit whose call was cancelled (the client went away meanwhile)."""
    if commit.cancelled():
        return
    if (exc := commit.exception()) is not None:
        log.warning("storing an upload whose client went away failed: %s", exc)
    else:
        _log_stored(commit.result())


def _first_metadata(message: Message | None, name: str, data_field: str) -> Message:
    if message is None:
        raise _invalid(f"empty stream: the first {name} must carry metadata")
    which = message.WhichOneof("upload_packet")
    if which != "metadata":
        got = data_field if which == data_field else "nothing"
        raise _invalid(f"the first {name} must carry metadata, got {got}")
    return message.metadata  # type: ignore[attr-defined,no-any-return]


async def _begin(func: Any, *args: Any) -> PendingUpload:
    """Start a pending upload in a worker thread. If the call is cancelled meanwhile, the
    upload the thread goes on to create is aborted (its temp file removed), not leaked."""
    started = asyncio.ensure_future(_in_thread(func, *args))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_abort_orphan)
        raise


def _abort_orphan(started: asyncio.Future[PendingUpload]) -> None:
    if not started.cancelled() and started.exception() is None:
        started.result().abort()


async def _in_thread(func: Any, *args: Any) -> Any:
    """Run blocking store work off the event loop, mapping store refusals to gRPC statuses."""
    try:
        return await asyncio.to_thread(func, *args)
    except StorageLimitError as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from exc


@contextlib.contextmanager
def _logged(stream: Stream[Any, Any], rpc: str) -> Any:
    """Log refused calls (never the metadata, which may hold a token) and map store errors."""
    try:
        try:
            yield
        except StorageLimitError as exc:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from exc
        except SyncdError as exc:
            log.error("%s from %s failed: %s", rpc, _peer(stream), exc)
            raise GRPCError(Status.INTERNAL, str(exc)) from exc
        except OSError as exc:
            # a store the sink cannot write (permissions, I/O error) is the operator's to fix
            log.error("%s from %s failed: cannot write the store: %s", rpc, _peer(stream), exc)
            raise GRPCError(Status.INTERNAL, f"cannot write the store: {exc.strerror}") from exc
    except GRPCError as exc:
        level = logging.WARNING if exc.status is Status.RESOURCE_EXHAUSTED else logging.INFO
        log.log(
            level, "%s from %s refused: %s: %s", rpc, _peer(stream), exc.status.name, exc.message
        )
        raise


def _log_stored(item: StoredItem) -> None:
    um = item.upload_metadata
    log.debug(
        "stored %s %s (%d bytes, part %r, %s/%s/%s) as %s",
        item.kind,
        item.id,
        item.size_bytes,
        um.part_id,
        um.component_type,
        um.component_name,
        um.method_name,
        item.path,
    )


# --- the server -----------------------------------------------------------------------


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for a grpclib server, with Nagle's algorithm off on every
    connection it accepts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        dualstack = family == socket.AF_INET6 and host in ("::", "") and socket.has_dualstack_ipv6()
        sock = socket.create_server(
            (host, port), family=family, backlog=128, dualstack_ipv6=dualstack
        )
    except OSError as exc:
        raise SyncdError(f"cannot listen on {_join(host, port)}: {exc.strerror or exc}") from exc
    # grpclib turns Nagle's algorithm off only on sockets that say IPPROTO_TCP, and accepted
    # sockets inherit what the listening one says (create_server leaves it 0). With Nagle
    # on, every answer waits for the client's delayed ACK: about 40 ms per call.
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Sink:
    """A DataSyncService + AuthService server storing into ``store`` (see module docstring)."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key_id: str | None = None,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        sweep_interval_s: float = 600.0,
        identity: CaptureIdentity | None = None,
    ) -> None:
        self._store = Store(store, max_upload_bytes=max_upload_bytes, min_free_bytes=min_free_bytes)
        self._index = SinkIndex(self._store.root, identity)
        self._auth = _Auth(api_key_id, api_key)
        self._host = host
        self._requested_port = port
        self._max_message_bytes = max_message_bytes
        self._sweep_interval_s = sweep_interval_s
        self._server: Server | None = None
        self._port: int | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, cfg: SinkConfig) -> Sink:
        return cls(
            cfg.store,
            host=cfg.host,
            port=cfg.port,
            api_key_id=cfg.api_key_id,
            api_key=cfg.api_key,
            max_message_bytes=cfg.max_message_bytes,
            max_upload_bytes=cfg.max_upload_bytes,
            min_free_bytes=cfg.min_free_bytes,
            identity=cfg.identity,
        )

    @property
    def store(self) -> Path:
        return self._store.root

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port actually listened on (also when started with port 0)."""
        if self._port is None:
            raise RuntimeError("the sink is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` for clients (IPv6 hosts in brackets)."""
        return _join(self._host, self.port)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the sink is already started")
        await asyncio.to_thread(self._store.open)
        await asyncio.to_thread(self._index.open)
        sock = listen_socket(self._host, self._requested_port)
        self._port = sock.getsockname()[1]
        server = Server(
            [
                _DataSyncService(self._store, self._auth, self._max_message_bytes, self._index),
                _AuthService(self._auth),
                DataService(
                    self._index,
                    authorize=self._auth.check,
                    receive=lambda stream, kind: _recv(stream, kind, _MAX_QUERY_BYTES),
                ),
            ]
        )
        await server.start(sock=sock)
        self._server = server
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="sink-sweeper")
        log.info(
            "sink listening on %s, storing into %s (%s)",
            self.address,
            self.store,
            "API key required" if self._auth.required else "no API key: open to every client",
        )

    async def stop(self) -> None:
        """Stop listening; uploads still in flight are cancelled and leave no files."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        server.close()
        # Python 3.12+ waits here for idle client connections to go away; don't hang on them
        try:
            await asyncio.wait_for(server.wait_closed(), _STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("sink stopped with client connections still open")
        self._index.close()
        log.info("sink on %s stopped", self.address)

    def revoke_tokens(self) -> None:
        """Forget every issued token: clients must authenticate again."""
        self._auth.revoke_all()

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await asyncio.to_thread(self._store.sweep)
                await asyncio.to_thread(self._index.reconcile)
            except (OSError, sqlite3.Error) as exc:
                log.warning("sweeping %s failed: %s", self.store, exc)


def run_sink(cfg: SinkConfig) -> int:
    """Run a sink until SIGTERM or SIGINT; returns the exit code (0)."""
    return asyncio.run(_serve(cfg))


async def _serve(cfg: SinkConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Sink.from_config(cfg):
        await stop.wait()
    return 0
