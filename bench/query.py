"""Query latency of the sink's data API on 100,000 stored readings, beside raw floors.

Fill (not timed): a store with 100,000 tabular readings (1,000 uploads of 100, written by
the sink's Store and indexed by SinkIndex.record, as the sink does for each upload) from
100 components, each upload tagged with one of 10 tags; and 100,000 binary items (files
indexed through SinkIndex.record in batches; their data files are empty placeholders, as
these queries never read payloads). Then the medians of --repeat runs of:

- selective queries (one component of 100 and one tag: 100 readings / 100 items), a
  count, an unfiltered first page and a page 50,000 rows deep, through the query
  functions the DataService uses (SinkIndex.tabular_page / binary_page);
- the same selective queries through gRPC (a Sink on loopback, Viam-SDK-shaped requests);
- floors: a bare SQLite read of 50 readings by rowid, and a gRPC round trip to the sink
  that does no work (an RPC answered UNIMPLEMENTED).

Target: a selective query under 100 ms. Usage: python bench/query.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from syncd import mapping
from syncd.gen.app.data.v1 import data_pb2 as pb
from syncd.gen.app.data.v1.data_grpc import DataServiceStub
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import Sink
from syncd.sink_index import SinkIndex
from syncd.sink_index_types import ItemFilter
from syncd.sink_store import Store
from syncd.sink_store_items import StoredItem

TARGET_MS = 100.0
T0 = 1_780_000_000 * 10**9
COMPONENTS = 100
TAGS = 10


def fill(root: Path, uploads: int, per_upload: int, files: int) -> tuple[int, int]:
    store = Store(root)
    store.open()
    index = SinkIndex(root)
    index.open()
    n = 0
    for u in range(uploads):
        stream = mapping.Stream(
            "rdk:component:sensor",
            f"s{u % COMPONENTS}",
            "Readings",
            ds.DATA_TYPE_TABULAR_SENSOR,
            tags=(f"t{(u // COMPONENTS) % TAGS}",),
        )
        readings = []
        for _ in range(per_upload):
            t = T0 + n * 10**7
            body = {"readings": {"x": n * 0.5, "y": -9.81, "ok": n % 2 == 0}}
            readings.append(mapping.tabular_reading(json.dumps(body), t, t + 10**6))
            n += 1
        um = mapping.upload_metadata("part-1", stream)
        index.record([store.put_tabular(um, readings)], readings)
    batch: list[StoredItem] = []
    folder = root / "part-1" / "_" / "logs" / "_"
    folder.mkdir(parents=True, exist_ok=True)
    received = datetime.fromtimestamp(T0 / 1e9, UTC)
    for i in range(files):
        path = folder / f"f{i:06d}.bin"
        path.touch()
        um = ds.UploadMetadata(
            part_id="part-1",
            component_name=f"c{i % COMPONENTS}",
            type=ds.DATA_TYPE_FILE,
            file_name=path.name,
            file_extension=".bin",
            tags=[f"t{(i // COMPONENTS) % TAGS}"],
            file_modify_time=mapping.timestamp_from_ns(T0 + i * 10**7),
        )
        batch.append(StoredItem(f"{i:032x}", "file", path, received, 1000, um))
        if len(batch) == 1000:
            index.record(batch)
            batch = []
    index.record(batch)
    index.close()
    return n, files


def median_ms(func: Callable[[], object], repeat: int) -> float:
    for _ in range(3):
        func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def amedian_ms(func: Callable[[], Awaitable[object]], repeat: int) -> float:
    for _ in range(3):
        await func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def direct(root: Path, repeat: int, tag: str) -> dict[str, float]:
    index = SinkIndex(root)
    index.open(reconcile=False)
    one_tab = ItemFilter(component_name="s7", tags=(tag,))
    one_bin = ItemFilter(component_name="c7", tags=(tag,))
    matches = (
        len(index.tabular_page(one_tab, limit=1000).rows),
        len(index.binary_page(one_bin, limit=1000).rows),
    )
    print(f"selective filter (s7/c7, {tag}): {matches[0]} readings, {matches[1]} binary items")
    deep = index.tabular_page(limit=50_000).last
    conn = index._conn()
    out = {
        "tabular: one component, one tag (first 50)": median_ms(
            lambda: index.tabular_page(one_tab), repeat
        ),
        "tabular: count of that": median_ms(
            lambda: index.tabular_page(one_tab, count_only=True), repeat
        ),
        "tabular: newest 50 of everything": median_ms(lambda: index.tabular_page(), repeat),
        "tabular: 50 after a cursor 50,000 deep": median_ms(
            lambda: index.tabular_page(last=deep), repeat
        ),
        "binary: one component, one tag (first 50)": median_ms(
            lambda: index.binary_page(one_bin), repeat
        ),
        "binary: count of everything": median_ms(
            lambda: index.binary_page(count_only=True), repeat
        ),
        "floor: bare SQLite read of 50 readings": median_ms(
            lambda: conn.execute(
                "SELECT data FROM readings WHERE rowid BETWEEN 5000 AND 5049"
            ).fetchall(),
            repeat,
        ),
    }
    index.close()
    return out


async def over_grpc(root: Path, repeat: int, tag: str) -> dict[str, float]:
    async with Sink(root) as sink:
        channel = Channel("127.0.0.1", sink.port)
        stub = DataServiceStub(channel)
        tab = pb.TabularDataByFilterRequest(
            data_request=pb.DataRequest(
                filter=pb.Filter(component_name="s7", tags_filter=pb.TagsFilter(tags=[tag]))
            )
        )
        binary = pb.BinaryDataByFilterRequest(
            data_request=pb.DataRequest(
                filter=pb.Filter(component_name="c7", tags_filter=pb.TagsFilter(tags=[tag]))
            )
        )
        assert (await stub.TabularDataByFilter(tab)).data
        unserved = type(stub.TagsByFilter)(
            channel,
            "/viam.app.data.v1.DataService/TabularDataBySQL",
            pb.TagsByFilterRequest,
            pb.TagsByFilterResponse,
        )

        async def round_trip() -> None:
            with contextlib.suppress(GRPCError):
                await unserved(pb.TagsByFilterRequest())

        try:
            return {
                "gRPC tabular: one component, one tag (first 50)": await amedian_ms(
                    lambda: stub.TabularDataByFilter(tab), repeat
                ),
                "gRPC binary, no bytes: one component, one tag": await amedian_ms(
                    lambda: stub.BinaryDataByFilter(binary), repeat
                ),
                "floor: gRPC round trip doing no work": await amedian_ms(round_trip, repeat),
            }
        finally:
            channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 readings and items")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    uploads, files = (100, 10_000) if args.quick else (1000, 100_000)
    with tempfile.TemporaryDirectory(prefix="syncd-bench-query-") as tmp:
        root = Path(tmp) / "store"
        start = time.perf_counter()
        readings, items = fill(root, uploads, 100, files)
        print(
            f"filled: {readings:,} readings and {items:,} binary items in "
            f"{time.perf_counter() - start:.1f} s"
        )
        tag = f"t{(uploads - 1) // COMPONENTS % TAGS}"  # s7's last upload: 100 readings
        figures = direct(root, args.repeat, tag)
        figures |= asyncio.run(over_grpc(root, args.repeat, tag))
    width = max(map(len, figures))
    for name, ms in figures.items():
        print(f"  {name:<{width}}  {ms:8.2f} ms")
    selective = [ms for name, ms in figures.items() if "one component" in name]
    verdict = "met" if max(selective) < TARGET_MS else "MISSED"
    print(f"target: selective queries under {TARGET_MS:.0f} ms: {verdict}")
    sys.exit(0 if verdict == "met" else 1)


if __name__ == "__main__":
    main()
