"""Cell claims on a shared file system: which process trains which cell, safe against crashes.

Every cell has a claim log, `<cell dir>/claims/`, of numbered records `000001.json`, ... The
newest record is the cell's state: `running` (owner host, pid, token, start time and a heartbeat
timestamp) or `released`. Every change of owner is the creation of the next number with
`os.link` from a fully written temporary file: creating a name that exists fails atomically (on
local file systems and NFS alike), so of two processes that read the same newest record and
race to change it, exactly one wins, and no one ever reads a half-written claim.

- claim: the newest record is absent or `released` -> create the next one as `running`.
- take over: the newest is `running` but its owner is dead (same host, pid gone) or its
  heartbeat is older than `stale_after_s` -> create the next one as `running`. A number is
  never reused, so a slow taker cannot take over a claim that someone else already renewed.
- heartbeat: the owner rewrites its own record (temporary file + rename) every `heartbeat_s`
  from a thread. If a newer record appeared (its claim was taken over while it hung), it sets
  `lost`, and the grid stops that cell at the next epoch end.
- release: the owner creates the next record as `released` (a taker that won first makes this
  fail, which is fine: the cell is the taker's now).
Heartbeats compare wall clocks across hosts: keep them synchronised (NTP) to well within
`stale_after_s`.

Beside the claims, the owner keeps the cell's attempt records: attempts.jsonl (one line per
start and outcome, with host, pid and rank) and failure.json (the failed attempts: the last
reason and traceback, and every reason before it). Each `start` line names the claim record it
ran under and the epoch it resumed at, so that whoever takes over a dead worker's claim can tell
whether that attempt made progress (engine/grid/worker.py charges it only when it did not).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine.cell_files import ATTEMPTS_FILE, CLAIMS_DIR, FAILURE_FILE
from engine.checkpoint import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a process on a host (each claim also gets a unique token)."""

    host: str
    pid: int

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def stale_reason(record: dict, stale_after_s: float, now: float | None = None) -> str | None:
    """Why a `running` record may be taken over, or None while its owner counts as alive."""
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", -1))):
        return f"worker {record.get('host')}:{record.get('pid')} died"
    age_s = now - float(record.get("heartbeat", 0.0))
    if age_s > stale_after_s:
        return f"worker {record.get('host')}:{record.get('pid')} stopped heartbeating {age_s:.0f} s ago"
    return None


def latest(folder: Path) -> tuple[int, dict | None]:
    """The newest record's number and content ((0, None) when the cell was never claimed)."""
    try:
        numbers = [int(p.stem) for p in folder.iterdir() if p.suffix == ".json" and p.stem.isdigit()]
    except FileNotFoundError:
        return 0, None
    if not numbers:
        return 0, None
    number = max(numbers)
    path = folder / f"{number:06d}.json"
    try:
        return number, json.loads(path.read_text())
    except (OSError, ValueError):
        # Records appear complete (link of a written file), so this is damage from outside:
        # treat it as a running claim whose heartbeat is the file's age, so it expires.
        return number, {"state": "running", "host": "?", "pid": -1, "heartbeat": _mtime(path)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _create(folder: Path, number: int, record: dict) -> bool:
    """Creates record `number` atomically; False when another process created it first."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".new.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, folder / f"{number:06d}.json")
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno == errno.EEXIST:
            return False
        raise
    finally:
        os.unlink(tmp)


@dataclass
class Claim:
    """A claim this process holds on one cell. Use `start_heartbeat` then `release`."""

    folder: Path
    number: int
    record: dict
    took_over: str | None = None  # why the previous owner's claim was taken over, if it was
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_heartbeat(self, interval_s: float) -> None:
        self._thread = threading.Thread(target=self._beat, args=(interval_s,), daemon=True,
                                        name=f"heartbeat-{self.folder.parent.name}")
        self._thread.start()

    def _beat(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except OSError as e:  # a file system hiccup must not end the cell; the next beat retries
                log.warning("heartbeat of %s failed: %s", self.folder.parent.name, e)
            if self.lost:
                return

    def refresh(self) -> None:
        """Rewrites this claim's heartbeat, or marks it lost when a newer record exists."""
        if latest(self.folder)[0] != self.number:
            self.lost = True
            log.warning("claim on %s was taken over by another worker", self.folder.parent.name)
            return
        self.record["heartbeat"] = time.time()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".beat.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.folder / f"{self.number:06d}.json")

    def release(self, outcome: str) -> None:
        """Stops the heartbeat and frees the cell (a no-op when the claim was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            _create(self.folder, self.number + 1, {"state": "released", "outcome": outcome,
                                                   "host": self.record["host"], "pid": self.record["pid"],
                                                   "time": time.time()})


def try_claim(cell_folder: Path, stale_after_s: float, owner: Owner | None = None) -> Claim | None:
    """Claims the cell whose folder is `cell_folder`, or returns None when someone else holds it.

    Args:
        stale_after_s: a running claim whose heartbeat is older than this is taken over.
        owner: defaults to this process.
    """
    owner = owner or Owner.current()
    folder = Path(cell_folder) / CLAIMS_DIR
    number, record = latest(folder)
    took_over = None
    if record is not None and record.get("state") == "running":
        took_over = stale_reason(record, stale_after_s)
        if took_over is None:
            return None
    now = time.time()
    mine = {"state": "running", "host": owner.host, "pid": owner.pid, "token": uuid.uuid4().hex,
            "started": now, "heartbeat": now}
    if not _create(folder, number + 1, mine):
        return None
    return Claim(folder, number + 1, mine, took_over)


def holder(cell_folder: Path, stale_after_s: float) -> dict | None:
    """The live claim on a cell (its record), or None when the cell is free or its claim is stale."""
    _, record = latest(Path(cell_folder) / CLAIMS_DIR)
    if record is None or record.get("state") != "running" or stale_reason(record, stale_after_s):
        return None
    return record


def failure_record(cell_folder: Path) -> dict:
    """failure.json of a cell ({} when none of its attempts failed)."""
    path = Path(cell_folder) / FAILURE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def failed_attempts(cell_folder: Path) -> int:
    return failure_record(cell_folder).get("attempts", 0)


def record_failure(cell_folder: Path, reason: str, detail: list[str]) -> int:
    """Adds one failed attempt to failure.json; returns the number of failed attempts."""
    path = Path(cell_folder) / FAILURE_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    attempts = previous.get("attempts", 0) + 1
    history = previous.get("history", []) + [{"reason": reason, "time": time.time()}]
    write_json_atomic({"cell_id": path.parent.name, "attempts": attempts, "reason": reason, "traceback": detail,
                       "history": history}, path)
    return attempts


def append_event(cell_folder: Path, event: str, rank: int, **extra) -> None:
    """Appends one line to attempts.jsonl: start, done, failed, interrupted or lost."""
    owner = Owner.current()
    row = {"event": event, "time": time.time(), "host": owner.host, "pid": owner.pid, "rank": rank, **extra}
    Path(cell_folder).mkdir(parents=True, exist_ok=True)
    with (Path(cell_folder) / ATTEMPTS_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")


def attempt_start(cell_folder: Path, claim_number: int) -> dict | None:
    """The `start` line of the attempt that ran under claim record `claim_number` (None when its
    worker died before starting, or the line predates claim numbers)."""
    path = Path(cell_folder) / ATTEMPTS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the last line of a worker killed while writing it
                continue
    return next((r for r in reversed(rows) if r.get("event") == "start" and r.get("claim") == claim_number), None)


def clear_failures(cell_folder: Path, rank: int) -> None:
    """Gives a failed cell a fresh attempt count (`--retry-failed`): its failure record moves into
    attempts.jsonl as a `requeued` line, and failure.json goes."""
    path = Path(cell_folder) / FAILURE_FILE
    previous = json.loads(path.read_text())
    append_event(cell_folder, "requeued", rank, previous_attempts=previous["attempts"], reason=previous["reason"],
                 history=previous.get("history", []))
    path.unlink()
