"""A DataSyncService that accepts and discards every upload, for benchmarks.

Runs in its own process so the client under test has the CPU it would have on a robot.
Prints "PORT <n>" once listening. Counts what it received; SIGTERM prints the totals.
"""

from __future__ import annotations

import asyncio
import signal

from grpclib.server import Server

from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import listen_socket


class NullService(data_sync_grpc.DataSyncServiceBase):
    def __init__(self) -> None:
        self.readings = 0
        self.bytes = 0
        self.calls = 0

    async def DataCaptureUpload(self, stream) -> None:
        request = await stream.recv_message()
        self.calls += 1
        self.readings += len(request.sensor_contents)
        await stream.send_message(ds.DataCaptureUploadResponse(binary_data_id="x"))

    async def FileUpload(self, stream) -> None:
        self.calls += 1
        async for message in stream:
            self.bytes += len(message.file_contents.data)
        await stream.send_message(ds.FileUploadResponse(binary_data_id="x"))

    async def StreamingDataCaptureUpload(self, stream) -> None:
        self.calls += 1
        async for message in stream:
            self.bytes += len(message.data)
        await stream.send_message(ds.StreamingDataCaptureUploadResponse(binary_data_id="x"))


async def main() -> None:
    service = NullService()
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
