"""One lock per root and dataset/collection, safe on NFS and Lustre (DESIGN.md §2: exit 75 when busy).

A lock is the file `<root>/.locks/<name>.lock`, created with O_CREAT|O_EXCL: atomic on local file systems,
NFSv3+ and Lustre (not NFSv2). `fcntl`/`flock` locks are not used: they are silently local-only on some NFS
mounts and lost when a client reboots. The file holds JSON: host, pid, the process start tick, start time,
command and a random token that identifies this holder.

A lock is stale, and may be broken, when
- its holder ran on this host and that process is gone (or the pid now belongs to another process), or
- it was not refreshed for `max_age` seconds (the only test possible for a holder on another host). The
  holder refreshes the file's mtime in a background thread, so a run of several days keeps its lock. The
  mtime is set by the file server's clock and compared with ours: `max_age` must dwarf any clock skew
  (the default is hours).

Breaking takes turns: a breaker first creates `<name>.lock.break` with O_EXCL, then, holding it, reads the
lock again and removes it only if it is still the one judged stale (same token, still stale); then everyone
races for the lock with O_EXCL again, which exactly one wins. (An earlier "rename it aside, put it back if
it was fresh" scheme left the lock path empty for an instant, and a third process could take the lock in
that instant while the put-back failed: two winners, seen in CI.) The guard file is held for microseconds;
one older than BREAK_GRACE belonged to a breaker that died and is removed. A lock broken by mistake costs
duplicate work, never corruption, as long as every writer uses temporary names unique to its process and
atomic renames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mmcorpus import layout
from mmcorpus.core.atomicio import pid_alive
from mmcorpus.errors import LockedError, UsageError
from mmcorpus.registry import NAME_RE

DEFAULT_MAX_AGE = 6 * 3600.0  # seconds without a refresh before another host may break the lock
log = logging.getLogger(__name__)
DEFAULT_POLL = 5.0
SAY_EVERY = 30.0  # --wait: how often it says whose lock it is waiting for
# A lock file whose JSON is not (yet) readable may be in the instant between O_EXCL and write(): it is only
# broken once it is this old, so we never break a lock that is being written.
UNREADABLE_GRACE = 60.0
BREAK_GRACE = 30.0  # seconds: a breaker holds `<name>.lock.break` for microseconds; an older one is left over


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the process holding it."""

    host: str
    pid: int
    since: float  # time.time() when taken
    command: str = ""
    token: str = ""
    pid_start: int | None = None  # /proc/<pid>/stat start tick: tells a reused pid from the holder

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        if not self.pid:
            return f"a lock file being written or unreadable, since {when}"
        running = f", running: {self.command}" if self.command else ""
        return f"host {self.host}, pid {self.pid}, since {when}{running}"


def lock_path(root: Path, name: str) -> Path:
    if not NAME_RE.match(name):  # the name becomes a file name: no '/', no '..'
        raise UsageError(f"invalid lock name {name!r}")
    return layout.lock_path(root, name)


def read_holder(root: Path, name: str) -> Holder | None:
    """The current holder of a lock, or None when it is free or unreadable."""
    return _read(lock_path(root, name))


def describe_lock(root: Path, name: str, max_age: float = DEFAULT_MAX_AGE) -> str | None:
    """One line for `status`: who holds the lock, and whether the next run will break it; None when free."""
    path = lock_path(root, name)
    holder = _read(path)
    if holder is None and not path.exists():
        return None
    text = (holder or _unreadable(path)).describe()
    return text + (" [stale: the next run breaks it]" if _is_stale(path, holder, max_age) else "")


def describe_locks(root: Path, name: str, max_age: float = DEFAULT_MAX_AGE) -> list[str]:
    """The lock of `name` and those of its --shard slices (`<name>.shard-I-of-N`), described."""
    lock_path(root, name)  # refuses a name that is no file name before it goes into a glob
    names = [name] + layout.shard_lock_names(root, name)
    return [f"{n}: {text}" if n != name else text for n in names if (text := describe_lock(root, n, max_age))]


@contextlib.contextmanager
def hold_lock(root: Path, name: str, *, wait: bool = False, max_age: float = DEFAULT_MAX_AGE,
              poll: float = DEFAULT_POLL, timeout: float | None = None, command: str | None = None,
              say_every: float = SAY_EVERY) -> Iterator[Holder]:
    """Hold `<root>/.locks/<name>.lock` for the `with` block.

    Busy and `wait` False: raise LockedError (exit 75) naming the holder. `wait` True: poll every `poll`
    seconds until free (or raise LockedError after `timeout` seconds, when given), saying whose lock it waits
    for at once and every `say_every` seconds (the holder may change while we wait).
    """
    path = lock_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me(command)
    deadline = None if timeout is None else time.monotonic() + timeout
    said = None
    while True:
        holder = _try_acquire(path, me, max_age)
        if holder is None:
            break
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise LockedError(f"'{name}' is locked by another run ({holder.describe()}); lock file {path}")
        if said is None or time.monotonic() - said >= say_every:
            said = time.monotonic()
            log.info("waiting for the lock on '%s', held by %s (%s)", name, holder.describe(), path)
        time.sleep(poll)
    refresher = _Refresher(path, me.token, interval=max(0.05, max_age / 10))
    try:
        yield me
    finally:
        refresher.stop()
        _release(path, me.token)


@contextlib.contextmanager
def hold_locks(root: Path, names: Iterable[str], **options) -> Iterator[list[Holder]]:
    """Hold several locks (a dataset and the collections it fetches). Taken in sorted order, so two runs
    waiting for overlapping sets cannot deadlock; on failure the ones already taken are released."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(hold_lock(root, n, **options)) for n in sorted(set(names))]


# --------------------------------------------------------------------------------------------- internals


def _me(command: str | None) -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(), since=time.time(),
                  command=command if command is not None else " ".join(sys.argv)[:300],
                  token=uuid.uuid4().hex, pid_start=_pid_start(os.getpid()))


def _try_acquire(path: Path, me: Holder, max_age: float) -> Holder | None:
    """Take the lock; return None when taken, else the live holder. Breaks stale locks at most twice per call
    (a second stale lock right after the first means something odd is going on: report it as busy)."""
    for _ in range(2):
        if _create(path, me):
            return None
        holder = _read(path)
        if not _is_stale(path, holder, max_age):
            # None: being written right now, or gone between create and read; busy either way
            return holder or _unreadable(path)
        _break(path, holder, max_age)
    return _read(path) or _unreadable(path)


def _create(path: Path, me: Holder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(me.__dict__, fh)
        fh.flush()
        os.fsync(fh.fileno())  # other NFS clients must see the content, not an empty file
    return True


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text())
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _unreadable(path: Path) -> Holder:
    """Stands for a holder whose lock file is empty, half-written or gone (pid 0: see Holder.describe)."""
    return Holder(host="", pid=0, since=_mtime(path) or time.time())


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _is_stale(path: Path, holder: Holder | None, max_age: float) -> bool:
    mtime = _mtime(path)
    if mtime is None:
        return False  # gone meanwhile: the next O_EXCL decides
    age = time.time() - mtime
    if holder is None:
        return age > UNREADABLE_GRACE
    if holder.host == socket.gethostname():
        return not _alive(holder.pid, holder.pid_start)
    return age > max_age


def _alive(pid: int, pid_start: int | None) -> bool:
    if not isinstance(pid, int) or pid <= 0:  # kill(0) or kill(-1) would signal whole process groups
        return False
    if not pid_alive(pid):
        return False
    # pid reuse: after a reboot or a long time the holder's pid may belong to an unrelated process.
    current = _pid_start(pid)
    return pid_start is None or current is None or current == pid_start


def _pid_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _break(path: Path, judged: Holder | None, max_age: float) -> None:
    """Remove a stale lock, one breaker at a time (module docstring). Returns without doing anything when
    another process is breaking it: the caller's next O_EXCL attempt then decides."""
    guard = layout.lock_break_guard(path)
    if not _take_guard(guard):
        return
    try:
        current = _read(path)
        # Still the lock we judged (a fresh one has another token) and still stale (an unreadable file may
        # have become readable, or been replaced by one being written now).
        if (current and current.token) == (judged and judged.token) and _is_stale(path, current, max_age):
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _take_guard(guard: Path) -> bool:
    for _ in range(2):
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            mtime = _mtime(guard)
            if mtime is None or time.time() - mtime <= BREAK_GRACE:
                return False  # another breaker is at work (or just finished)
            guard.unlink(missing_ok=True)  # its breaker died between taking and removing it
    return False


def _release(path: Path, token: str) -> None:
    """Remove the lock only if it is still ours: a lock broken by another host (we were presumed dead) now
    belongs to someone else, and removing it would let a third run in."""
    holder = _read(path)
    if holder is not None and holder.token == token:
        path.unlink(missing_ok=True)


class _Refresher:
    """Touches the lock file every `interval` seconds while it is ours, so a long run never looks stale to
    other hosts. Stops touching (and says nothing) once the file belongs to someone else."""

    def __init__(self, path: Path, token: str, interval: float):
        self.path, self.token, self.interval = path, token, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-refresh-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not refresh(self.path, self.token):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def refresh(path: Path, token: str) -> bool:
    """Update the lock's mtime if it still holds `token`; False when it is no longer ours."""
    holder = _read(path)
    if holder is None or holder.token != token:
        return False
    with contextlib.suppress(OSError):
        os.utime(path)
    return True
