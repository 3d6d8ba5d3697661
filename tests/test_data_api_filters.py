"""Filter combinations: the index's answers against a brute-force scan of what was uploaded.

A sink receives, over gRPC, binary readings (unary and streamed), files and tabular
uploads with metadata drawn from small pools, requests built with syncd's own mapping
functions as its uploader builds them. Hypothesis then draws Viam Filters (every field,
the four tag modes, interval edges, the sink's identity fields), page sizes and orders;
the answers of the index functions the DataService uses must equal a plain scan of the
uploaded records written from the API's stated semantics.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import mapping, sink_index_query
from syncd.cloud import CloudClient
from syncd.data_api import item_filter
from syncd.gen.app.data.v1 import data_pb2 as pb
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import Sink
from syncd.sink_index import SinkIndex
from syncd.sink_index_types import CaptureIdentity, datetime_ns
from syncd.sink_store_items import iter_store

IDENTITY = CaptureIdentity(organization_id="org-1", robot_id="robot-1", part_name="main")
COMPONENTS = [
    ("rdk:component:camera", "front"),
    ("rdk:component:camera", "rear"),
    ("rdk:component:sensor", "imu"),
    ("rdk:component:arm", "arm"),
]
METHODS = ["ReadImage", "Readings", "GetImages"]
PARTS = ["part-a", "part-b"]
MIMES = [("image/jpeg", ".jpeg"), ("image/png", ".png"), ("application/octet-stream", ".bin")]
TAGS = ["a", "b", "c"]
LABELS = ["cat", "dog", "car"]
DATASETS = ["d1", "d2"]
BASE_NS = datetime_ns(datetime(2026, 5, 1, tzinfo=UTC))
MINUTE = 60 * 1_000_000_000


@dataclass(frozen=True)
class Record:
    key: str
    part: str
    ctype: str
    cname: str
    method: str
    mime: str
    t: int
    tags: tuple[str, ...]
    labels: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()


@dataclass
class Corpus:
    index: SinkIndex
    binaries: list[Record]
    rows: list[Record]
    key_of: dict[str, str]  # binary id -> record key
    times: list[int]


def _pick(rng: random.Random, pool: list[str], most: int = 2) -> tuple[str, ...]:
    return tuple(rng.sample(pool, rng.randint(0, most)))


async def _upload(client: CloudClient, rng: random.Random) -> tuple[list[Record], list[Record]]:
    binaries: list[Record] = []
    rows: list[Record] = []
    for i in range(50):
        ctype, cname = rng.choice(COMPONENTS)
        method, part = rng.choice(METHODS), rng.choice(PARTS)
        mime, ext = rng.choice(MIMES)
        tags, datasets = _pick(rng, TAGS), _pick(rng, DATASETS, 1)
        labels = _pick(rng, LABELS)
        t = BASE_NS + rng.randrange(500) * MINUTE + (i % 3)  # some equal minutes
        stream = mapping.Stream(
            ctype, cname, method, ds.DATA_TYPE_BINARY_SENSOR, tags, datasets, ext, mime
        )
        um = mapping.upload_metadata(part, stream)
        reading = mapping.binary_reading(f"binary-{i}".encode(), t, t + 5)
        for label in labels:
            reading.metadata.annotations.bboxes.add(label=label)
        if i % 10 == 0:  # the streaming path, as for readings over 1 MB

            async def chunks(data: bytes = reading.binary) -> AsyncIterator[bytes]:
                yield data

            meta = ds.DataCaptureUploadMetadata(
                upload_metadata=um, sensor_metadata=reading.metadata
            )
            await client.streaming_upload(meta, chunks)
        else:
            await client.data_capture_upload(
                ds.DataCaptureUploadRequest(metadata=um, sensor_contents=[reading])
            )
        binaries.append(
            Record(f"binary-{i}", part, ctype, cname, method, mime, t, tags, labels, datasets)
        )
    for i in range(8):
        part, (mime, ext) = rng.choice(PARTS), rng.choice(MIMES)
        tags, datasets = _pick(rng, TAGS), _pick(rng, DATASETS, 1)
        t = BASE_NS + rng.randrange(500) * MINUTE
        um = ds.UploadMetadata(
            part_id=part,
            type=ds.DATA_TYPE_FILE,
            file_name=f"/robot/logs/f{i}{ext}",
            file_extension=ext,
            tags=tags,
            dataset_ids=datasets,
            mime_type=mime,
            file_modify_time=mapping.timestamp_from_ns(t),
        )

        async def file_chunks(data: bytes = f"file-{i}".encode()) -> AsyncIterator[bytes]:
            yield data

        await client.file_upload(um, file_chunks)
        binaries.append(Record(f"file-{i}", part, "", "", "", mime, t, tags, (), datasets))
    for i in range(10):
        ctype, cname = rng.choice(COMPONENTS)
        method, part = rng.choice(METHODS), rng.choice(PARTS)
        tags = _pick(rng, TAGS)
        stream = mapping.Stream(ctype, cname, method, ds.DATA_TYPE_TABULAR_SENSOR, tags)
        readings = []
        for j in range(4):
            t = BASE_NS + rng.randrange(500) * MINUTE
            key = f"row-{i}-{j}"
            readings.append(mapping.tabular_reading(json.dumps({"k": key}), t, t + 7))
            rows.append(Record(key, part, ctype, cname, method, "", t, tags))
        await client.data_capture_upload(
            ds.DataCaptureUploadRequest(
                metadata=mapping.upload_metadata(part, stream), sensor_contents=readings
            )
        )
    return binaries, rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    store = tmp_path_factory.mktemp("filters") / "store"

    async def fill() -> tuple[list[Record], list[Record]]:
        async with Sink(store, identity=IDENTITY) as sink:
            client = CloudClient("127.0.0.1", sink.port, tls=False)
            try:
                return await _upload(client, random.Random(5))
            finally:
                await client.close()

    binaries, rows = asyncio.run(fill())
    key_of = {
        item.id: item.read_bytes().decode() for item in iter_store(store) if item.kind != "tabular"
    }
    times = sorted({r.t for r in binaries + rows})
    with SinkIndex(store, IDENTITY) as index:
        yield Corpus(index, binaries, rows, key_of, times)


# --- the semantics, written out plainly ----------------------------------------------------


def admits(record: Record, f: pb.Filter) -> bool:
    """Whether ``record`` matches Viam filter ``f``, by the API's stated semantics."""

    def identity_ok(mine: str, wanted: list[str]) -> bool:
        return not mine or not wanted or mine in wanted

    if not (
        identity_ok(IDENTITY.organization_id, list(f.organization_ids))
        and identity_ok(IDENTITY.location_id, list(f.location_ids))
        and identity_ok(IDENTITY.robot_id, [f.robot_id] if f.robot_id else [])
        and identity_ok(IDENTITY.robot_name, [f.robot_name] if f.robot_name else [])
        and identity_ok(IDENTITY.part_name, [f.part_name] if f.part_name else [])
    ):
        return False
    for wanted, value in (
        (f.component_name, record.cname),
        (f.component_type, record.ctype),
        (f.method, record.method),
        (f.part_id, record.part),
        (f.dataset_id, f.dataset_id if f.dataset_id in record.datasets else None),
    ):
        if wanted and wanted != value:
            return False
    if f.mime_type and record.mime not in f.mime_type:
        return False
    if f.HasField("interval"):
        start, end = f.interval.start, f.interval.end
        if f.interval.HasField("start") and record.t < start.seconds * 10**9 + start.nanos:
            return False
        if f.interval.HasField("end") and record.t >= end.seconds * 10**9 + end.nanos:
            return False
    kind, tags = f.tags_filter.type, set(f.tags_filter.tags)
    if kind == pb.TAGS_FILTER_TYPE_TAGGED and not record.tags:
        return False
    if kind == pb.TAGS_FILTER_TYPE_UNTAGGED and record.tags:
        return False
    if kind in (0, pb.TAGS_FILTER_TYPE_MATCH_BY_OR) and tags and not tags & set(record.tags):
        return False
    return not (f.bbox_labels and not set(f.bbox_labels) & set(record.labels))


FIELDS = [
    "component_name",
    "component_type",
    "method",
    "part_id",
    "robot_id",
    "robot_name",
    "part_name",
    "location_ids",
    "organization_ids",
    "mime_type",
    "bbox_labels",
    "dataset_id",
    "tags_filter",
    "interval",
]


@st.composite
def filters(draw: st.DrawFn, times: list[int]) -> pb.Filter:
    """A Filter with up to three fields set (more would rarely match anything)."""
    chosen = draw(st.sets(st.sampled_from(FIELDS), max_size=3))
    one = {
        "component_name": [name for _, name in COMPONENTS] + ["nope"],
        "component_type": sorted({ctype for ctype, _ in COMPONENTS}),
        "method": METHODS,
        "part_id": [*PARTS, "part-z"],
        "robot_id": ["robot-1", "robot-2"],
        "robot_name": ["rover"],
        "part_name": ["main", "other"],
        "dataset_id": DATASETS,
    }
    many = {
        "location_ids": ["loc-1", "loc-2"],
        "organization_ids": ["org-1", "org-2"],
        "mime_type": [m for m, _ in MIMES] + [""],
        "bbox_labels": LABELS,
    }
    f = pb.Filter()
    for name in chosen & one.keys():
        setattr(f, name, draw(st.sampled_from(one[name])))
    for name in chosen & many.keys():
        values = st.lists(st.sampled_from(many[name]), min_size=1, max_size=2, unique=True)
        getattr(f, name).extend(draw(values))
    if "tags_filter" in chosen:
        f.tags_filter.type = draw(st.sampled_from([0, 1, 2, 3]))  # type: ignore[assignment]
        f.tags_filter.tags.extend(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)))
    if "interval" in chosen:
        # bounds on, or one nanosecond either side of, the times of the data
        edge = st.tuples(st.sampled_from(times), st.sampled_from([-1, 0, 1]))
        for bound in draw(st.sampled_from([("start",), ("end",), ("start", "end")])):
            t, offset = draw(edge)
            getattr(f.interval, bound).CopyFrom(mapping.timestamp_from_ns(t + offset))
    f.tags_filter.SetInParent()  # as create_filter always sends it
    return f


def _tabular_key(data: bytes) -> str:
    return str(struct_pb2.Struct.FromString(data)["k"])


@given(
    data=st.data(),
    limit=st.integers(1, 9),
    ascending=st.booleans(),
    walk=st.sampled_from([0, 3, 2000]),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_filters_match_a_brute_force_scan(
    corpus: Corpus, data: st.DataObject, limit: int, ascending: bool, walk: int
) -> None:
    """``walk`` is how far a page query walks in time order before it fetches all its
    matches and sorts them, so that both ways, and their hand-over, are checked."""
    with mock.patch.object(sink_index_query, "_WALK", walk):
        check_filter(corpus, data.draw(filters(corpus.times)), limit, ascending)


def check_filter(corpus: Corpus, f: pb.Filter, limit: int, ascending: bool) -> None:
    flt = item_filter(f)
    index = corpus.index
    want_binary = [r for r in corpus.binaries if admits(r, f)]
    want_rows = [r for r in corpus.rows if admits(r, f)]

    for page_of, want, key in (
        (index.binary_page, want_binary, lambda row: corpus.key_of[row.id]),
        (index.tabular_page, want_rows, lambda row: _tabular_key(row.data)),
    ):
        assert page_of(flt, count_only=True).count == len(want)
        got, last = [], ""
        while True:
            page = page_of(flt, limit=limit, last=last, ascending=ascending)
            if not page.rows:
                assert page.last == last
                break
            assert len(page.rows) <= limit and page.last == page.rows[-1].cursor
            got += page.rows
            last = page.last
        keys = [key(row) for row in got]
        assert sorted(keys) == sorted(r.key for r in want)  # each exactly once
        times = [row.time_requested_ns for row in got]
        assert times == sorted(times, reverse=not ascending)
        when = {r.key: r.t for r in want}
        assert all(when[k] == t for k, t in zip(keys, times, strict=True))

    assert index.tags(flt) == sorted({t for r in want_binary for t in r.tags})
    assert index.bbox_labels(flt) == sorted({label for r in want_binary for label in r.labels})


def test_the_corpus_is_varied(corpus: Corpus) -> None:
    """The scan above is only worth something if the data spans the pools."""
    records = corpus.binaries + corpus.rows
    assert {r.cname for r in records} >= {"front", "rear", "imu", "arm"}
    assert {len(r.tags) for r in records} == {0, 1, 2}
    assert {len(r.labels) for r in corpus.binaries} == {0, 1, 2}
    assert len(corpus.times) < len(records)  # equal times exist: ties are paged too
    assert len(corpus.key_of) == 58


def test_an_unknown_tag_mode_is_refused(corpus: Corpus) -> None:
    with pytest.raises(ValueError):
        item_filter(pb.Filter(tags_filter=pb.TagsFilter(type=9)))  # type: ignore[arg-type]


def test_index_answers_survive_a_rebuild(corpus: Corpus, tmp_path: Path) -> None:
    """An index built from the sidecars answers as the one filled upload by upload."""
    rebuilt = SinkIndex(corpus.index.root, IDENTITY, path=tmp_path / "rebuilt.db")
    try:
        rebuilt.open(reconcile=False)
        for flt in (item_filter(None), item_filter(pb.Filter(component_name="front"))):
            for page_of in ("binary_page", "tabular_page"):
                ours = getattr(rebuilt, page_of)(flt, limit=500)
                theirs = getattr(corpus.index, page_of)(flt, limit=500)
                assert ours.rows == theirs.rows
    finally:
        rebuilt.close()
