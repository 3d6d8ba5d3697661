"""Crash harness, short variant: `syncd run` and `syncd sink` SIGKILLed at random while a
mixed workload keeps coming; afterwards everything is there at least once, by content.

The long variant is `make soak` (bench/chaos.py); tests/chaos_harness.py has the details.
The seed is printed and settable: SYNCD_CHAOS_SEED=<n> python -m pytest tests/test_chaos.py

Below it: the bugs the crash runs found, each pinned down by a deterministic test.
"""

from __future__ import annotations

import asyncio
import threading
import time

from chaos_harness import Chaos, Settings, chaos_seed
from grpclib.client import Channel

from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.app.datasync.v1.data_sync_grpc import DataSyncServiceStub
from syncd.sink import Sink
from syncd.sink_store import PendingUpload
from syncd.sink_store_items import iter_store


def test_kill_9_at_random_loses_nothing(tmp_path):
    seed = chaos_seed()
    print(f"chaos seed {seed}")
    chaos = Chaos(
        Settings(
            seed=seed,
            workdir=tmp_path,
            rounds=6,
            kill_after_s=(0.3, 2.0),
            sink_kill_p=0.5,
            max_file_bytes=3 * 1024 * 1024,
            log=print,
        )
    )
    report = chaos.run()
    text = chaos.check(report)
    assert report.kills >= 6 and report.items > 100, text


# --- found by the crash runs ------------------------------------------------------------


async def test_a_commit_survives_its_cancelled_call(tmp_path, monkeypatch):
    """The sink's client goes away (killed) just as the last chunk is in: the commit was
    promised to finish anyway. It used to race the handler's cleanup, which aborted the
    upload under it: "RuntimeError: upload ... is already aborted", a traceback in the
    sink's log ("Task exception was never retrieved") and the upload not stored."""
    scheduled = threading.Event()
    original = PendingUpload.commit

    def late_commit(self: PendingUpload):
        scheduled.set()
        time.sleep(0.3)  # the thread has the commit; the cancellation comes meanwhile
        return original(self)

    monkeypatch.setattr(PendingUpload, "commit", late_commit)
    unhandled: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unhandled.append(ctx))
    store = tmp_path / "store"
    async with Sink(store, min_free_bytes=0) as sink:
        channel = Channel("127.0.0.1", sink.port)
        try:
            stub = DataSyncServiceStub(channel)
            async with stub.FileUpload.open() as stream:
                um = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="a.txt")
                await stream.send_message(ds.FileUploadRequest(metadata=um))
                await stream.send_message(
                    ds.FileUploadRequest(file_contents=ds.FileData(data=b"abc")), end=True
                )
                assert await asyncio.to_thread(scheduled.wait, 10)
                await stream.cancel()
        finally:
            channel.close()
        for _ in range(100):
            if list(iter_store(store)):
                break
            await asyncio.sleep(0.05)
    import gc

    gc.collect()
    assert [item.read_bytes() for item in iter_store(store)] == [b"abc"]
    assert not [p for p in store.rglob(".tmp-*")]
    assert unhandled == []
