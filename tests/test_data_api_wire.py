"""Wire compatibility of the DataService subset: Viam's SDK request bytes, and its descriptor.

The expected hex strings are the requests Viam's Python SDK 0.85.1 serialised for each call
(captured against a recording stub); the requests here are built by data_api_requests,
which mirrors the SDK's request building. A wrong field number, type or presence rule in
protos/app/data/v1/data.proto changes the bytes. The last test compares every message,
enum and RPC of the subset with the SDK's own compiled descriptor, field by field.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta, timezone

import data_api_requests as sdk
import pytest
from google.protobuf.message import Message

from syncd.data_api import item_filter
from syncd.gen.app.data.v1 import data_pb2 as pb
from syncd.sink_index_types import ItemFilter, TagsMode

PLUS_TWO = timezone(timedelta(hours=2))

CAPTURES: list[tuple[str, Message, str]] = [
    ("tabular_data_by_filter()", sdk.tabular_data_by_filter(), "0a020a00"),
    (
        "tabular_data_by_filter(Filter(), limit=0, ORDER_UNSPECIFIED, last='')",
        sdk.tabular_data_by_filter(pb.Filter(), limit=0, sort_order=pb.ORDER_UNSPECIFIED, last=""),
        "0a020a00",
    ),
    (
        "tabular_data_by_filter(create_filter(...), limit=10, ASC, 'abc', count_only, internal)",
        sdk.tabular_data_by_filter(
            sdk.create_filter(component_name="c", start_time=datetime(2024, 1, 1), tags=["x"]),
            limit=10,
            sort_order=pb.ORDER_ASCENDING,
            last="abc",
            count_only=True,
            include_internal_data=True,
        ),
        "0a1d 0a12 0a0163 6a08 0a06 088081c8ac06 7203 120178 100a 1a03616263 2002 1001 1801",
    ),
    ("binary_data_by_filter()", sdk.binary_data_by_filter(), "0a00 1001"),
    (
        "binary_data_by_filter(create_filter(), 5, DESC, 'z', no binary, count_only, internal)",
        sdk.binary_data_by_filter(
            sdk.create_filter(),
            limit=5,
            sort_order=pb.ORDER_DESCENDING,
            last="z",
            include_binary_data=False,
            count_only=True,
            include_internal_data=True,
        ),
        "0a0b 0a02 7200 1005 1a017a 2001 1801 2001",
    ),
    (
        "binary_data_by_ids(['id1', 'id2'])",
        sdk.binary_data_by_ids(["id1", "id2"]),
        "1001 2203696431 2203696432",
    ),
    (
        "binary_data_by_ids(['id1'], include_binary_data=False)",
        sdk.binary_data_by_ids(["id1"], include_binary_data=False),
        "2203696431",
    ),
    (
        "binary_data_by_ids([BinaryID(f, o, l)])",
        sdk.binary_data_by_ids([pb.BinaryID(file_id="f", organization_id="o", location_id="l")]),
        "1001 1a09 0a0166 12016f 1a016c",
    ),
    ("binary_data_by_ids([])", sdk.binary_data_by_ids([]), "1001"),
    ("delete_tabular_data('org', 0)", sdk.delete_tabular_data("org", 0), "0a036f7267"),
    (
        "delete_tabular_data('org', 5, DeleteTabularFilter(part_id='p'))",
        sdk.delete_tabular_data("org", 5, pb.DeleteTabularFilter(part_id="p")),
        "0a036f7267 1005 1a03 1a0170",
    ),
    ("delete_binary_data_by_filter(None)", sdk.delete_binary_data_by_filter(None), "0a00"),
    (
        "delete_binary_data_by_filter(create_filter(organization_ids=['o']))",
        sdk.delete_binary_data_by_filter(sdk.create_filter(organization_ids=["o"])),
        "0a05 5a016f 7200",
    ),
    (
        "delete_binary_data_by_ids(['a', 'b'])",
        sdk.delete_binary_data_by_ids(["a", "b"]),
        "1a0161 1a0162",
    ),
    (
        "delete_binary_data_by_ids([BinaryID(file_id='f')])",
        sdk.delete_binary_data_by_ids([pb.BinaryID(file_id="f")]),
        "1203 0a0166",
    ),
    (
        "add_tags_to_binary_data_by_ids(['t'], ['a'])",
        sdk.add_tags_to_binary_data_by_ids(["t"], ["a"]),
        "120174 220161",
    ),
    (
        "remove_tags_from_binary_data_by_ids(['t'], ['a'])",
        sdk.remove_tags_from_binary_data_by_ids(["t"], ["a"]),
        "120174 220161",
    ),
    (
        "remove_tags_from_binary_data_by_ids(['t'], [BinaryID(file_id='f')])",
        sdk.remove_tags_from_binary_data_by_ids(["t"], [pb.BinaryID(file_id="f")]),
        "120174 1a03 0a0166",
    ),
    (
        "add_tags_to_binary_data_by_filter(['t'])",
        sdk.add_tags_to_binary_data_by_filter(["t"]),
        "0a00 120174",
    ),
    (
        "remove_tags_from_binary_data_by_filter(['t'])",
        sdk.remove_tags_from_binary_data_by_filter(["t"]),
        "0a00 120174",
    ),
    ("tags_by_filter()", sdk.tags_by_filter(), "0a00"),
    (
        "bounding_box_labels_by_filter(create_filter(bbox_labels=['q']))",
        sdk.bounding_box_labels_by_filter(sdk.create_filter(bbox_labels=["q"])),
        "0a05 7200 7a0171",
    ),
    ("create_filter()", sdk.create_filter(), "7200"),
    (
        "create_filter(start_time=2024-01-01T00:00+02:00)",
        sdk.create_filter(start_time=datetime(2024, 1, 1, tzinfo=PLUS_TWO)),
        "6a08 0a06 08e0c8c7ac06 7200",
    ),
    (
        "create_filter(end_time=datetime(2024, 1, 1))",
        sdk.create_filter(end_time=datetime(2024, 1, 1)),
        "6a08 1206 088081c8ac06 7200",
    ),
]


@pytest.mark.parametrize(("call", "message", "expected"), CAPTURES, ids=[c[0] for c in CAPTURES])
def test_requests_encode_as_the_sdk_sends_them(call: str, message: Message, expected: str) -> None:
    wire = bytes.fromhex(expected.replace(" ", ""))
    assert message.SerializeToString().hex() == wire.hex(), call
    assert type(message).FromString(wire) == message


def test_requests_read_as_the_sdk_means_them() -> None:
    """The sink's reading of the captured bytes: presence rules decide the meaning."""
    binary = pb.BinaryDataByFilterRequest.FromString(bytes.fromhex("0a001001"))
    assert not binary.data_request.HasField("filter") and binary.include_binary
    assert item_filter(None) == ItemFilter()
    assert item_filter(pb.Filter.FromString(bytes.fromhex("7200"))) == ItemFilter()
    half_open = pb.Filter.FromString(bytes.fromhex("6a081206088081c8ac067200"))
    end = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert item_filter(half_open) == ItemFilter(end_ns=int(end) * 10**9)
    tagged = pb.Filter(tags_filter=pb.TagsFilter(type=pb.TAGS_FILTER_TYPE_UNTAGGED, tags=["a"]))
    assert item_filter(tagged).tags_mode is TagsMode.UNTAGGED
    deletion = pb.DeleteTabularDataRequest.FromString(bytes.fromhex("0a036f7267"))
    assert deletion.delete_older_than_days == 0 and not deletion.HasField("filter")


def test_result_messages_use_viams_field_numbers() -> None:
    """Hand-encoded from the spec's tag bytes: what the SDK reads back."""
    md = pb.BinaryMetadata(
        id="i",
        capture_metadata=pb.CaptureMetadata(organization_id="o", component_name="c", tags=["t"]),
        file_ext=".x",
        dataset_ids=["d"],
        binary_data_id="i",
        file_size_bytes=3,
    )
    md.annotations.bboxes.add(label="l")
    expected = (
        "0a0169"  # id = 1
        "1209 0a016f 4a0163 620174"  # capture_metadata = 2 {org 1, component_name 9, tags 12}
        "3202 2e78"  # file_ext = 6
        "4205 0a03 12016c"  # annotations = 8 {bboxes 1 {label 2}}
        "4a0164"  # dataset_ids = 9
        "520169"  # binary_data_id = 10
        "5803"  # file_size_bytes = 11
    )
    assert md.SerializeToString().hex() == expected.replace(" ", "")
    response = pb.TabularDataByFilterResponse(count=2, last="l", total_size_bytes=1)
    response.data.add(metadata_index=1)
    assert response.SerializeToString().hex() == "12021001180222016c2801"


_DUMP = r"""
import json
from google.protobuf import descriptor_pb2

def dump(file_descriptor, names):
    fd = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(fd)
    out = {"package": fd.package, "messages": {}, "enums": {}, "rpcs": {}}
    def message(m):
        return {
            "deprecated": m.options.deprecated,
            "reserved": sorted([r.start, r.end] for r in m.reserved_range),
            "reserved_names": sorted(m.reserved_name),
            "fields": sorted(
                [f.number, f.name, f.type, f.type_name, f.label, f.proto3_optional,
                 f.options.deprecated]
                for f in m.field
            ),
            "nested": {n.name: message(n) for n in m.nested_type},
        }
    for m in fd.message_type:
        if m.name in names["messages"]:
            out["messages"][m.name] = message(m)
    for e in fd.enum_type:
        if e.name in names["enums"]:
            out["enums"][e.name] = sorted([v.number, v.name] for v in e.value)
    for s in fd.service:
        for m in s.method:
            if m.name in names["rpcs"]:
                out["rpcs"][m.name] = [s.name, m.input_type, m.output_type, m.options.deprecated,
                                       m.client_streaming, m.server_streaming]
    return out
"""


def _names() -> dict[str, list[str]]:
    return {
        "messages": sorted(pb.DESCRIPTOR.message_types_by_name),
        "enums": sorted(pb.DESCRIPTOR.enum_types_by_name),
        "rpcs": sorted(pb.DESCRIPTOR.services_by_name["DataService"].methods_by_name),
    }


def test_descriptor_matches_the_viam_sdk(viam_python: str) -> None:
    names = _names()
    assert len(names["rpcs"]) == 12
    script = (
        _DUMP
        + "import sys\nfrom viam.gen.app.data.v1 import data_pb2\n"
        + "print(json.dumps(dump(data_pb2.DESCRIPTOR, json.loads(sys.argv[1]))))\n"
    )
    result = subprocess.run(
        [viam_python, "-c", script, json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs = json.loads(result.stdout)
    scope: dict[str, object] = {}
    exec(_DUMP, scope)
    ours = json.loads(json.dumps(scope["dump"](pb.DESCRIPTOR, names)))  # type: ignore[operator]
    assert sorted(theirs["messages"]) == names["messages"], "a message the SDK lacks"
    for kind in ("messages", "enums", "rpcs"):
        for name in names[kind]:
            assert ours[kind][name] == theirs[kind][name], f"{kind[:-1]} {name} differs"
    assert ours["package"] == theirs["package"] == "viam.app.data.v1"
