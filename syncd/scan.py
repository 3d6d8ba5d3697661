"""What the watcher considers for upload: the candidate rules, and the blocking probes.

Pure rules, no I/O: :func:`classify` decides from a path alone whether a file is a
candidate, of which kind (``capture``, ``prog`` or ``file``) and with which tags and
dataset ids from its folders; :func:`eligible_at` says when a file has been left alone
long enough. Blocking probes, run by the watcher on a worker thread: :func:`walk` lists a
sync folder with ``os.scandir``, :func:`probe` stats one path, :func:`open_prog_files`
finds ``.prog`` files some process holds open, :func:`open_error` checks a file opens.

Skipped silently:
- names starting with ``.``, files and folders alike: writers' temp files (a receiver's
  ``.tmp-*``, rsync's ``.name.XXXXXX``, editors' swap files) become visible under their
  final name by a rename, which is what we wait for;
- folders named ``failed`` (files set aside), at any depth;
- the state dir (the outbox, the receiver's store) when it lies inside a sync folder;
- empty files, until they grow (Viam skips them too); but not an empty ``.prog``,
  which becomes an orphan like any other once its writer is gone (and is then removed).

Skipped with one warning per path (the user can fix these): names that are not UTF-8
(the outbox stores text), files that cannot be stat'ed or opened, broken or looping
symlinks, and anything that is not a regular file (sockets, pipes, devices).

Symlinks: a symlinked file counts under the link's path with its target's size and
mtime. A symlinked folder is walked when it points outside every sync folder (the
watchdog observer does not follow it, so only scans see its files); one pointing back
into the tree is skipped, since its files are found under their own path; and loops end
because no folder reached through a symlink is walked twice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.config import Config

CAPTURE, PROG, FILE = "capture", "prog", "file"
FAILED_DIR = "failed"
TAG_PREFIX = "tag="
DATASET_PREFIX = "dataset="

_SEP = os.sep


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file worth queueing: its kind and what its folders say about it."""

    kind: str
    tags: tuple[str, ...] = ()
    dataset_ids: tuple[str, ...] = ()

    @property
    def meta(self) -> dict[str, list[str]]:
        """The outbox row's ``meta``: the folders' tags and dataset ids, those there are."""
        meta = {}
        if self.tags:
            meta["tags"] = list(self.tags)
        if self.dataset_ids:
            meta["dataset_ids"] = list(self.dataset_ids)
        return meta


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a path is not a candidate; ``warn`` when the user should hear about it."""

    reason: str
    warn: bool = False


@dataclass(frozen=True, slots=True)
class Found:
    """A non-empty regular candidate file as it was seen on disk."""

    path: str
    candidate: Candidate
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Problem:
    """A path skipped for a reason worth one warning."""

    path: str
    message: str


# --- pure rules ------------------------------------------------------------------------


def kind_of(name: str) -> str:
    """The kind a file name implies."""
    if name.endswith(".capture"):
        return CAPTURE
    if name.endswith(".prog"):
        return PROG
    return FILE


def is_text(name: str) -> bool:
    """Whether a name decoded from the file system is valid UTF-8 (no escaped bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """A path safe to log: undecodable bytes shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def folder_skip(name: str) -> str | None:
    """Why a folder of this name is not walked, or None."""
    if name.startswith("."):
        return "hidden folder"
    if name == FAILED_DIR:
        return f"inside a {FAILED_DIR!r} folder"
    return None


def folder_label(name: str) -> tuple[str, str] | None:
    """``('tag', x)`` for a folder named ``tag=x``, ``('dataset', id)`` for ``dataset=id``."""
    for prefix, label in ((TAG_PREFIX, "tag"), (DATASET_PREFIX, "dataset")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return label, name[len(prefix) :]
    return None


def _with_label(
    tags: tuple[str, ...], datasets: tuple[str, ...], name: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    label = folder_label(name)
    if label is None:
        return tags, datasets
    kind, value = label
    if kind == "tag":
        return (tags if value in tags else (*tags, value)), datasets
    return tags, (datasets if value in datasets else (*datasets, value))


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (normalized absolute strings)."""
    return path == folder or path.startswith(folder.rstrip(_SEP) + _SEP)


def _rules(path: str, root: str, excluded: Sequence[str]) -> Candidate | Skip:
    if not inside(path, root) or path == root:
        return Skip("outside the sync folders")
    for folder in excluded:
        # Only a state dir below the sync folder is left out: one holding the sync folder
        # must not hide all of it.
        if folder != root and inside(folder, root) and inside(path, folder):
            return Skip("inside the state dir")
    *folders, name = path[len(root.rstrip(_SEP)) + 1 :].split(_SEP)
    tags: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    for folder in folders:
        reason = folder_skip(folder)
        if reason:
            return Skip(reason)
        tags, datasets = _with_label(tags, datasets, folder)
    if name.startswith("."):
        return Skip("hidden file")
    if not is_text(path):
        return Skip("the name is not valid UTF-8; rename it to have it uploaded", warn=True)
    return Candidate(kind_of(name), tags, datasets)


def classify(path: str, root: str, cfg: Config) -> Candidate | Skip:
    """Whether the file at ``path`` (below the sync folder ``root``) is a candidate.

    Decided from the path alone: kind by extension, tags and dataset ids from the
    ``tag=x`` / ``dataset=id`` folders between ``root`` and the file, and the skip rules
    of this module. Paths are absolute, as the file system gives them.
    """
    state_dir = os.path.normpath(os.fspath(cfg.state_dir))
    return _rules(os.path.normpath(path), os.path.normpath(os.fspath(root)), (state_dir,))


def eligible_at(mtime_ns: int, first_seen: float, period_s: float) -> float:
    """When a file unchanged since ``first_seen`` has been left alone for ``period_s``.

    Measured from its modification time, so a file quiet for long is eligible at once;
    a modification time in the future (a clock step) counts from when it was first seen.
    """
    return min(mtime_ns / 1e9, first_seen) + period_s


# --- the layout of the sync folders --------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The sync folders and the state dir as normalized absolute path strings.

    ``real_*`` hold the same folders resolved through symlinks (filled by
    :meth:`resolved`, which does I/O), to recognise symlinks pointing back into the tree.
    ``excluded`` is the state dir (both forms) where it lies below a sync folder.
    """

    roots: tuple[str, ...]
    state_dir: str
    real_roots: tuple[str, ...] = ()
    real_state_dir: str = ""
    excluded: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        roots = (*self.roots, *self.real_roots)
        excluded = tuple(
            folder
            for folder in dict.fromkeys((self.state_dir, self.real_state_dir))
            if folder and any(folder != r and inside(folder, r) for r in roots)
        )
        object.__setattr__(self, "excluded", excluded)

    @classmethod
    def from_config(cls, cfg: Config) -> Layout:
        roots = [os.path.normpath(os.fspath(p)) for p in cfg.sync_paths]
        return cls(tuple(dict.fromkeys(roots)), os.path.normpath(os.fspath(cfg.state_dir)))

    def resolved(self) -> Layout:
        """The same layout with symlinks in the folders' own paths resolved (blocking)."""
        return Layout(
            self.roots,
            self.state_dir,
            tuple(os.path.realpath(r) for r in self.roots),
            os.path.realpath(self.state_dir),
        )

    def root_for(self, path: str) -> str | None:
        """The innermost sync folder holding ``path`` (sync folders may nest)."""
        best = None
        for root in self.roots:
            if inside(path, root) and (best is None or len(root) > len(best)):
                best = root
        return best

    def classify(self, path: str) -> Candidate | Skip:
        root = self.root_for(path)
        if root is None:
            return Skip("outside the sync folders")
        return _rules(path, root, self.excluded)

    def points_inside(self, real_path: str) -> bool:
        """Whether a resolved path lies in a sync folder or the state dir."""
        folders = (*self.roots, *self.real_roots, *self.excluded)
        return any(inside(real_path, folder) for folder in folders)


# --- blocking probes (worker thread) ----------------------------------------------------


@dataclass
class WalkResult:
    """What one walk of a sync folder found.

    ``found`` holds candidates whose size or mtime differ from what the caller already
    knows (new or changed files); ``seen`` every candidate path present.
    """

    found: list[Found] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    dirs: int = 0
    stats: int = 0
    complete: bool = True  # False when a folder could not be listed


def walk(layout: Layout, root: str, known: Mapping[str, tuple[int, int]]) -> WalkResult:
    """List every candidate below ``root`` with ``os.scandir`` (blocking).

    Other sync folders nested inside ``root`` are left to their own walk, so each file
    has one root and one set of folder tags.
    """
    result = WalkResult()
    other_roots = set(layout.roots) - {root}
    excluded = set(layout.excluded)
    linked_seen: set[tuple[int, int]] = set()
    # Folders reached through a symlink are remembered by inode, with every folder below
    # them: a later symlink into any of them is a loop or a second path to the same files.
    stack: list[tuple[str, bool, tuple[str, ...], tuple[str, ...]]] = [(root, False, (), ())]
    while stack:
        folder, linked, tags, datasets = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError:
            continue  # removed while we walked
        except OSError as exc:
            result.problems.append(Problem(folder, f"cannot list the folder: {exc.strerror}"))
            result.complete = False
            continue
        result.dirs += 1
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = entry.path
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            st = None
            if is_link:
                result.stats += 1
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    result.problems.append(Problem(path, "broken symlink"))
                    continue
                except OSError as exc:
                    result.problems.append(
                        Problem(path, f"cannot follow the symlink: {exc.strerror}")
                    )
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if folder_skip(name) or not is_text(name):
                        continue
                    key = (st.st_dev, st.st_ino)
                    if key in linked_seen or layout.points_inside(os.path.realpath(path)):
                        continue  # a loop, or files already found under their own path
                    linked_seen.add(key)
                    stack.append((path, True, *_with_label(tags, datasets, name)))
                    continue
            elif is_dir:
                if folder_skip(name) or path in excluded or path in other_roots:
                    continue
                if not is_text(name):
                    result.problems.append(
                        Problem(path, "the folder name is not valid UTF-8; its files are skipped")
                    )
                    continue
                if linked:
                    result.stats += 1
                    try:
                        dst = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (dst.st_dev, dst.st_ino) in linked_seen:
                        continue
                    linked_seen.add((dst.st_dev, dst.st_ino))
                stack.append((path, linked, *_with_label(tags, datasets, name)))
                continue
            if not is_text(name):
                result.problems.append(
                    Problem(path, "the name is not valid UTF-8; rename it to have it uploaded")
                )
                continue
            if st is None:
                result.stats += 1
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    result.problems.append(Problem(path, f"cannot stat: {exc.strerror}"))
                    continue
            if not stat.S_ISREG(st.st_mode):
                result.problems.append(Problem(path, "not a regular file"))
                continue
            result.seen.add(path)
            kind = kind_of(name)
            if st.st_size == 0 and kind != PROG:
                continue
            if known.get(path) != (st.st_size, st.st_mtime_ns):
                candidate = Candidate(kind, tags, datasets)
                result.found.append(Found(path, candidate, st.st_size, st.st_mtime_ns))
    return result


def probe(layout: Layout, path: str) -> Found | Problem | None:
    """Classify and stat one path (blocking); None when there is nothing to do.

    Nothing to do: not a candidate for a silent reason, vanished, empty (unless a
    ``.prog``), or a folder.
    """
    verdict = layout.classify(path)
    if isinstance(verdict, Skip):
        return Problem(path, verdict.reason) if verdict.warn else None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return Problem(path, "broken symlink")
        return None
    except OSError as exc:
        return Problem(path, f"cannot stat: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return None  # a symlinked folder: scans walk it
    if not stat.S_ISREG(st.st_mode):
        return Problem(path, "not a regular file")
    if st.st_size == 0 and verdict.kind != PROG:
        return None
    return Found(path, verdict, st.st_size, st.st_mtime_ns)


def open_error(path: str) -> str | None:
    """Why the file cannot be opened for reading, or None when it can (blocking)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None  # vanished: the caller's next stat tells
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    os.close(fd)
    return None


def open_prog_files(proc: str = "/proc") -> set[tuple[int, int]] | None:
    """``(st_dev, st_ino)`` of every ``.prog`` file some process holds open (blocking).

    Reads every file descriptor of every process we may inspect (``/proc/<pid>/fd``), so
    it is slow: call it only when an old ``.prog`` needs the answer. None where ``/proc``
    lists no descriptors (not Linux): callers fall back to age alone. Processes of other
    users are invisible unless we run as root or as their user.
    """
    if not os.path.isdir(os.path.join(proc, "self", "fd")):
        return None
    held: set[tuple[int, int]] = set()
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to look at
        for fd in fds:
            link = os.path.join(fd_dir, fd)
            try:
                if not os.readlink(link).endswith(".prog"):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            held.add((st.st_dev, st.st_ino))
    return held


def file_id(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file behind ``path``, or None if it vanished."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
