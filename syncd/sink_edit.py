"""Changes to stored items after their upload: edited tags, deletion, a tabular file cut short.

The file side of the sink's data API. :mod:`syncd.sink_index_changes` decides what changes
and keeps the index's rows in step (its docstring gives the crash-safe order of index and
file changes). Each change is atomic per file: new content goes to a hidden ``.tmp-*`` file
(swept by :meth:`~syncd.sink_store.Store.open` if a crash leaves it) that is fsynced and
renamed into place, and the folder is fsynced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from syncd.capture_file import CaptureReader, encode_uvarint
from syncd.fsutil import fsync_dir
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_store_items import TEMP_PREFIX, StoredItem, sidecar_path, write_sidecar


def retag(item: StoredItem, tags: Sequence[str]) -> StoredItem:
    """``item`` with exactly ``tags``, recorded in its sidecar.

    The capture-file header keeps the tags the upload carried: the sidecar is what the
    sink and :func:`~syncd.sink_store_items.iter_store` read.
    """
    um = ds.UploadMetadata()
    um.CopyFrom(item.upload_metadata)
    del um.tags[:]
    um.tags.extend(tags)
    changed = replace(item, upload_metadata=um)
    write_sidecar(changed)
    return changed


def remove(paths: Iterable[Path]) -> None:
    """Delete data files and their sidecars, then fsync each folder once.

    The data file goes first: a sidecar left alone by a crash is swept by the store, while
    a data file left alone would still be an item.
    """
    folders = set()
    for path in paths:
        for victim in (path, sidecar_path(path)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        folders.add(path.parent)
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(folder)


def rewrite_tabular(item: StoredItem, drop: Collection[int]) -> StoredItem:
    """Rewrite a tabular capture file without the readings at positions ``drop``.

    Returns the item as it now is (``readings`` and ``size_bytes`` updated, also in its
    sidecar). The header and the kept readings are copied byte for byte.
    """
    temp = item.path.with_name(f"{TEMP_PREFIX}{item.id}.rewrite")
    kept = size = 0
    try:
        with CaptureReader(item.path) as reader, open(temp, "xb") as out:
            with open(item.path, "rb") as src:
                out.write(src.read(reader.readings_offset))
            for index, raw in enumerate(reader.iter_raw()):
                if index in drop:
                    continue
                frame = encode_uvarint(len(raw)) + raw
                out.write(frame)
                size += len(frame)
                kept += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, item.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    changed = replace(item, size_bytes=size, readings=kept)
    write_sidecar(changed)  # fsyncs the folder, which also makes the rename durable
    return changed
