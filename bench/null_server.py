"""A DataSyncService that accepts and discards every upload, for benchmarks.

Runs in its own process so the client under test has the CPU it would have on a robot.
Prints "PORT <n>" once listening. Counts what it received; SIGTERM prints the totals.
``--latency-ms N`` answers each call N ms after its last message, as a server across a
real link does (loopback has next to no round-trip time).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from grpclib.server import Server

from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import listen_socket


class NullService(data_sync_grpc.DataSyncServiceBase):
    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.readings = 0
        self.bytes = 0
        self.calls = 0

    async def DataCaptureUpload(self, stream) -> None:
        request = await stream.recv_message()
        self.calls += 1
        self.readings += len(request.sensor_contents)
        await self._delay()
        await stream.send_message(ds.DataCaptureUploadResponse(binary_data_id="x"))

    async def FileUpload(self, stream) -> None:
        self.calls += 1
        async for message in stream:
            self.bytes += len(message.file_contents.data)
        await self._delay()
        await stream.send_message(ds.FileUploadResponse(binary_data_id="x"))

    async def StreamingDataCaptureUpload(self, stream) -> None:
        self.calls += 1
        async for message in stream:
            self.bytes += len(message.data)
        await self._delay()
        await stream.send_message(ds.StreamingDataCaptureUploadResponse(binary_data_id="x"))

    async def _delay(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-ms", type=float, default=0.0)
    service = NullService(parser.parse_args().latency_ms / 1000)
    server = Server([service])
    await server.start(sock=listen_socket("127.0.0.1", 0))
    print("PORT", server._server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"calls={service.calls} readings={service.readings} bytes={service.bytes}", flush=True)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
