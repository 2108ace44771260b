import json
import socket
import subprocess
import sys
import threading
import time

from engine.cell_files import CLAIMS_DIR
from engine.grid.claims import latest, try_claim


def _plant(cell, number=1, **fields):
    """Writes claim record `number` as another worker would have left it."""
    record = {"state": "running", "host": socket.gethostname(), "pid": 1, "token": "t", "started": time.time(),
              "heartbeat": time.time(), **fields}
    (cell / CLAIMS_DIR).mkdir(parents=True, exist_ok=True)
    (cell / CLAIMS_DIR / f"{number:06d}.json").write_text(json.dumps(record))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid is gone, not a zombie
    return process.pid


def test_claim_is_exclusive_until_released(tmp_path):
    first = try_claim(tmp_path, stale_after_s=60)
    assert first is not None and first.number == 1 and first.took_over is None
    assert try_claim(tmp_path, stale_after_s=60) is None  # held by this live process
    first.release("done")
    assert latest(tmp_path / CLAIMS_DIR)[1]["state"] == "released"
    second = try_claim(tmp_path, stale_after_s=60)
    assert second is not None and second.number == 3


def test_claim_of_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path):
    pid = _dead_pid()
    _plant(tmp_path, pid=pid)
    claim = try_claim(tmp_path, stale_after_s=3600)
    assert claim is not None and claim.number == 2
    assert f":{pid} died" in claim.took_over


def test_claim_with_an_expired_heartbeat_is_taken_over(tmp_path):
    _plant(tmp_path, host="elsewhere", pid=123, heartbeat=time.time() - 100)
    claim = try_claim(tmp_path, stale_after_s=50)
    assert claim is not None and "stopped heartbeating" in claim.took_over


def test_live_claims_are_not_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _plant(tmp_path / "a", pid=sleeper.pid)  # this host, pid alive, fresh heartbeat
        _plant(tmp_path / "b", host="elsewhere", pid=123, heartbeat=time.time() - 10)  # another host, fresh enough
        assert try_claim(tmp_path / "a", stale_after_s=50) is None
        assert try_claim(tmp_path / "b", stale_after_s=50) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_racing_takers_of_one_stale_claim_produce_exactly_one_owner(tmp_path):
    _plant(tmp_path, host="elsewhere", pid=123, heartbeat=time.time() - 100)
    barrier, won = threading.Barrier(8), []

    def take():
        barrier.wait()
        won.append(try_claim(tmp_path, stale_after_s=50))
    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    owners = [c for c in won if c is not None]
    assert len(owners) == 1
    assert latest(tmp_path / CLAIMS_DIR) == (2, owners[0].record)


def test_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    claim = try_claim(tmp_path, stale_after_s=60)
    before = claim.record["heartbeat"]
    claim.refresh()
    assert latest(tmp_path / CLAIMS_DIR)[1]["heartbeat"] > before and not claim.lost
    taker = try_claim(tmp_path, stale_after_s=-1)  # everything counts as stale
    assert taker is not None and taker.number == 2
    claim.start_heartbeat(0.01)
    deadline = time.time() + 10
    while not claim.lost and time.time() < deadline:
        time.sleep(0.01)
    assert claim.lost
    claim.release("lost")  # must not touch the taker's claim
    assert latest(tmp_path / CLAIMS_DIR) == (2, taker.record)


def test_unreadable_claim_counts_as_running_until_it_ages(tmp_path):
    (tmp_path / CLAIMS_DIR).mkdir()
    (tmp_path / CLAIMS_DIR / "000001.json").write_text("{half")
    assert try_claim(tmp_path, stale_after_s=60) is None
    claim = try_claim(tmp_path, stale_after_s=-1)
    assert claim is not None and claim.number == 2
