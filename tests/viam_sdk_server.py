"""A DataSyncService built from the Viam Python SDK's own generated stubs.

Run with the interpreter that has viam-sdk (never syncd's: the two register the same
protobuf names). Usage: python viam_sdk_server.py RECORD_FILE. Prints "PORT <n>" once
listening; appends one JSON object per upload (the SDK's decoding of what arrived) to
RECORD_FILE; stops on SIGTERM.
"""

import asyncio
import base64
import json
import signal
import sys

from google.protobuf.json_format import MessageToDict
from grpclib.server import Server
from viam.proto.app.datasync import (
    DataCaptureUploadResponse,
    DataSyncServiceBase,
    FileUploadResponse,
    StreamingDataCaptureUploadResponse,
)


class Recorder(DataSyncServiceBase):
    def __init__(self, path):
        self.path = path
        self.count = 0

    def record(self, entry):
        self.count += 1
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return f"sdk-{self.count}"

    async def DataCaptureUpload(self, stream):
        request = await stream.recv_message()
        entry = {"rpc": "DataCaptureUpload", "request": MessageToDict(request)}
        await stream.send_message(DataCaptureUploadResponse(binary_data_id=self.record(entry)))

    async def FileUpload(self, stream):
        first = await stream.recv_message()
        assert first.WhichOneof("upload_packet") == "metadata"
        data = b"".join([m.file_contents.data async for m in stream])
        entry = {
            "rpc": "FileUpload",
            "metadata": MessageToDict(first.metadata),
            "data": base64.b64encode(data).decode(),
        }
        await stream.send_message(FileUploadResponse(binary_data_id=self.record(entry)))

    async def StreamingDataCaptureUpload(self, stream):
        first = await stream.recv_message()
        assert first.WhichOneof("upload_packet") == "metadata"
        data = b"".join([m.data async for m in stream])
        entry = {
            "rpc": "StreamingDataCaptureUpload",
            "metadata": MessageToDict(first.metadata),
            "data": base64.b64encode(data).decode(),
        }
        await stream.send_message(
            StreamingDataCaptureUploadResponse(binary_data_id=self.record(entry))
        )


async def main():
    server = Server([Recorder(sys.argv[1])])
    await server.start("127.0.0.1", 0)
    print("PORT", server._server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
