"""Locks: real processes contend, stale locks (dead pid, reused pid, old lock of another host) are broken
exactly once, a fresh lock of another host is respected, release never removes someone else's lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO

from mmcorpus.core import locks
from mmcorpus.core.locks import hold_lock, hold_locks, lock_path, read_holder
from mmcorpus.errors import EXIT_LOCKED, LockedError


def write_lock(root: Path, name: str, *, age: float = 0.0, **fields) -> Path:
    path = lock_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time() - age, "command": "test",
              "token": "theirs", **fields}
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def start_holder(root: Path, name: str) -> subprocess.Popen:
    """A real process that takes the lock, says so, and holds it until its stdin is closed."""
    code = textwrap.dedent(f"""
        import sys
        from mmcorpus.core.locks import hold_lock
        with hold_lock({str(root)!r}, {name!r}, command="fetch {name}"):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_gets_exit_75_naming_the_holder_then_takes_over_after_kill(root):
    proc = start_holder(root, "cc3m")
    try:
        with pytest.raises(LockedError) as info:
            with hold_lock(root, "cc3m"):
                pass
        message = str(info.value)
        assert info.value.exit_code == EXIT_LOCKED
        assert f"pid {proc.pid}" in message and socket.gethostname() in message and "fetch cc3m" in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    with hold_lock(root, "cc3m") as me:  # the killed holder's lock is stale: its pid is gone
        assert read_holder(root, "cc3m").token == me.token
    assert not lock_path(root, "cc3m").exists()


def test_wait_polls_until_the_holder_releases(root):
    proc = start_holder(root, "gqa")
    acquired = []
    waiter = threading.Thread(target=lambda: acquired.append(_take(root, "gqa", wait=True, poll=0.02)))
    waiter.start()
    assert acquired == []  # still waiting: the holder is alive
    proc.stdin.close()  # the holder leaves its `with` block
    assert proc.wait() == 0
    waiter.join(timeout=30)
    assert acquired == [True]


def _take(root, name, **options) -> bool:
    with hold_lock(root, name, **options):
        return True


def test_wait_with_timeout_gives_up(root):
    write_lock(root, "vg", host="other-host")
    with pytest.raises(LockedError, match="other-host"):
        _take(root, "vg", wait=True, poll=0.01, timeout=0.05)


def _count_under_lock(root: str, counter: str, rounds: int) -> None:
    for _ in range(rounds):
        with hold_lock(root, "counter", wait=True, poll=0.001):
            value = int(Path(counter).read_text())  # read-modify-write: loses updates without mutual exclusion
            Path(counter).write_text(str(value + 1))


def test_mutual_exclusion_between_processes(root):
    counter = root / "counter.txt"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count_under_lock, args=(str(root), str(counter), 30)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.read_text() == "90"
    assert list((root / ".locks").iterdir()) == []


def _break_race(root: str, barrier, results, release) -> None:
    barrier.wait()
    try:
        with hold_lock(root, "coco"):
            results.put("won")
            release.wait(30)
    except LockedError:
        results.put("busy")


@pytest.mark.parametrize("round_", range(8))
def test_breakers_of_one_stale_lock_cannot_both_win(root, round_):
    """Four processes find the same stale lock at once; exactly one may win (each round is a new race)."""
    write_lock(root, "coco", pid=dead_pid())
    ctx = multiprocessing.get_context("fork")
    barrier, results, release = ctx.Barrier(4), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_break_race, args=(str(root), barrier, results, release)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=30) for _ in procs)
    release.set()
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["busy", "busy", "busy", "won"]
    assert [p.name for p in (root / ".locks").iterdir()] == []  # no guard or stale files left behind


def test_stale_pid_on_this_host_is_broken(root):
    write_lock(root, "cc12m", pid=dead_pid())
    assert _take(root, "cc12m")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc (Linux)")
def test_holder_killed_but_not_yet_reaped_is_dead(root):
    """kill -9 then an immediate re-run: until its parent reaps it, the killed holder is a zombie that still
    answers kill(pid, 0). It holds nothing (the newcomer's 'exit 75 naming the dead pid')."""
    proc = start_holder(root, "cc3m")
    proc.kill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed holder never became a zombie"
        time.sleep(0.01)
    try:
        os.kill(proc.pid, 0)  # still there as far as signals go
        with hold_lock(root, "cc3m") as me:
            assert read_holder(root, "cc3m").token == me.token
    finally:
        proc.wait()


def test_reused_pid_is_not_the_holder(root):
    # Our own pid is alive, but the lock was taken by an earlier process that had this pid.
    write_lock(root, "cc12m", pid=os.getpid(), pid_start=1)
    assert _take(root, "cc12m")


def test_lock_of_another_host_is_respected_within_max_age(root):
    write_lock(root, "sam", host="gpu-node-7", pid=1234, age=3600)
    with pytest.raises(LockedError, match=r"host gpu-node-7, pid 1234, since"):
        _take(root, "sam", max_age=7200)


def test_lock_of_another_host_older_than_max_age_is_broken(root):
    write_lock(root, "sam", host="gpu-node-7", pid=1234, age=3 * 3600)
    assert _take(root, "sam", max_age=7200)


def test_unreadable_lock_is_busy_while_young_and_broken_when_old(root):
    path = lock_path(root, "textvqa")
    path.parent.mkdir(parents=True)
    path.write_text("")  # a holder between O_EXCL and write()
    with pytest.raises(LockedError, match="being written or unreadable"):
        _take(root, "textvqa")
    old = time.time() - locks.UNREADABLE_GRACE - 10
    os.utime(path, (old, old))
    assert _take(root, "textvqa")


def test_release_keeps_a_lock_that_is_no_longer_ours(root):
    with hold_lock(root, "gqa"):
        write_lock(root, "gqa", host="other-host")  # another host broke ours and took it
    assert read_holder(root, "gqa").host == "other-host"


def test_refresh_touches_only_our_lock(root):
    path = write_lock(root, "gqa", age=1000)
    assert not locks.refresh(path, "not-ours") and time.time() - path.stat().st_mtime > 900
    assert locks.refresh(path, "theirs") and time.time() - path.stat().st_mtime < 900


def test_hold_locks_takes_all_or_none(root):
    write_lock(root, "vg", host="other-host")
    with pytest.raises(LockedError):
        with hold_locks(root, ["llava_instruct", "coco_train2017", "vg"]):
            pass
    assert sorted(p.name for p in (root / ".locks").iterdir()) == ["vg.lock"]  # the others were released


def test_lock_names_cannot_escape_the_lock_folder(root):
    with pytest.raises(Exception, match="invalid lock name"):
        lock_path(root, "../etc")


# ------------------------------------------------------------------------------------ the cron wrapper

CRON = REPO / "scripts" / "cron" / "mmcorpus-cron.sh"


def run_cron(tmp_path: Path, exit_code: int) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake-mmcorpus"
    # Like mmcorpus: the arguments into its --log-file (the last one), a line on stderr, the JSON on stdout.
    fake.write_text(f"#!/bin/bash\necho \"$@\" >\"${{@: -1}}\"\necho 'mmcorpus: error: on stderr' >&2\n"
                    f"echo '{{\"exit_code\": {exit_code}}}'\nexit {exit_code}\n")
    fake.chmod(0o755)
    env = {**os.environ, "MMCORPUS_ROOT": str(tmp_path / "root"), "MMCORPUS_BIN": str(fake)}
    return subprocess.run(["bash", str(CRON), "cc3m", "--workers", "2"], env=env, capture_output=True, text=True)


def test_cron_wrapper_is_silent_on_success_and_passes_the_cron_options(tmp_path):
    result = run_cron(tmp_path, 0)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    logs = tmp_path / "root" / "logs"
    assert json.loads((logs / "fetch-last.json").read_text()) == {"exit_code": 0}
    log = next(logs.glob("fetch-*.log")).read_text()
    assert log.startswith("fetch cc3m --workers 2 --quiet --json --log-file ")


def test_cron_wrapper_treats_exit_75_as_busy(tmp_path):
    run_cron(tmp_path, 0)
    result = run_cron(tmp_path, EXIT_LOCKED)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    logs = tmp_path / "root" / "logs"
    assert "busy: another run holds the lock (cc3m --workers 2)" in (logs / "cron-busy.log").read_text()
    assert json.loads((logs / "fetch-last.json").read_text()) == {"exit_code": 0}  # still the real run
    assert len(list(logs.glob("fetch-*.json"))) == 2  # the real run's summary and the link


def test_cron_wrapper_reports_other_failures(tmp_path):
    result = run_cron(tmp_path, 1)
    assert result.returncode == 1
    assert result.stderr.startswith("mmcorpus-cron: 'mmcorpus fetch cc3m --workers 2' failed with exit 1")
    # the log's tail follows; stderr was not appended to the log, where every error line would appear twice
    logs = tmp_path / "root" / "logs"
    [log] = logs.glob("fetch-*.log")
    assert "mmcorpus: error: on stderr" not in log.read_text()
    assert result.stderr.splitlines()[1].startswith("fetch cc3m --workers 2 --quiet --json --log-file ")
    assert not list(logs.glob(".fetch-*"))  # the wrapper's stderr file is removed


def test_breaker_leaves_a_fresh_lock_taken_after_it_judged_the_old_one(root):
    stale = locks.Holder(host=socket.gethostname(), pid=dead_pid(), since=0, token="stale")
    path = write_lock(root, "gqa", token="fresh")  # another breaker was faster and took the lock
    locks._break(path, stale, locks.DEFAULT_MAX_AGE)
    assert read_holder(root, "gqa").token == "fresh"
    assert [p.name for p in path.parent.iterdir()] == ["gqa.lock"]


def test_breaking_never_leaves_the_path_of_a_fresh_lock_free(root, monkeypatch):
    """After every rename/unlink a breaker makes, a third process tries to take the lock: it must never
    succeed while the fresh lock's holder still holds it. The old rename-and-put-back scheme lost this race
    (two winners, seen once in CI): its rename left the path free until the put-back."""
    stale = locks.Holder(host=socket.gethostname(), pid=dead_pid(), since=0, token="stale")
    path = write_lock(root, "gqa", token="fresh")
    third = locks.Holder(host="third", pid=1, since=0, token="third")
    stolen = []

    def then_try_to_take(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            if locks._create(path, third):
                stolen.append(real.__name__)
            return result
        return call

    monkeypatch.setattr(os, "rename", then_try_to_take(os.rename))
    monkeypatch.setattr(os, "unlink", then_try_to_take(os.unlink))
    locks._break(path, stale, locks.DEFAULT_MAX_AGE)
    assert stolen == [] and read_holder(root, "gqa").token == "fresh"


def test_breaking_waits_for_another_breaker_and_clears_a_dead_breakers_guard(root):
    path = write_lock(root, "vg", pid=dead_pid())
    guard = path.with_name("vg.lock.break")
    guard.touch()  # another process is breaking it right now
    with pytest.raises(LockedError):
        _take(root, "vg")
    assert path.exists()  # left to the other breaker
    old = time.time() - locks.BREAK_GRACE - 5
    os.utime(guard, (old, old))  # that breaker died holding the guard
    assert _take(root, "vg")
    assert not guard.exists()


def test_describe_locks_includes_the_shard_slices(tmp_path):
    from mmcorpus.core.locks import describe_locks

    assert describe_locks(tmp_path, "cc12m") == []
    with hold_lock(tmp_path, "cc12m.shard-1-of-4", command="mmcorpus fetch cc12m --shard 1/4"):
        (line,) = describe_locks(tmp_path, "cc12m")
    assert line.startswith("cc12m.shard-1-of-4: ") and "--shard 1/4" in line
    assert describe_locks(tmp_path, "cc12m") == []


def test_wait_says_whose_lock_it_waits_for(root):
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("mmcorpus.core.locks")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    path = write_lock(root, "vg", host="other-host")
    acquired = []
    waiter = threading.Thread(target=lambda: acquired.append(_take(root, "vg", wait=True, poll=0.01, say_every=0)))
    try:
        waiter.start()
        deadline = time.monotonic() + 30
        while len(said) < 2 and time.monotonic() < deadline:  # at once, then every say_every
            time.sleep(0.01)
        path.unlink()  # the holder goes away: the waiter takes the lock
        waiter.join(timeout=30)
    finally:
        logger.removeHandler(handler)
    assert acquired == [True]
    assert len(said) >= 2 and all(line.startswith("waiting for the lock on 'vg', held by ") and "other-host" in line
                                  for line in said)
