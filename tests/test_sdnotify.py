"""sd_notify from the daemon's side: a service manager that does not read never stops lb (a
reload sends RELOADING=1 and READY=1; the manager's queue holds 10 datagrams), and the test
harness's Listener, playing systemd, reads everything that arrives."""
import socket
import time

from lb import sdnotify


def _fresh_address(monkeypatch, path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setattr(sdnotify, "_address", sdnotify._UNSET)
    monkeypatch.setattr(sdnotify, "_dropped", 0)
    monkeypatch.setattr(sdnotify, "_watchdog", sdnotify._UNSET)


def _drain(manager) -> list[str]:
    """What the manager's queue holds, read without waiting."""
    manager.setblocking(False)
    got = []
    try:
        while True:
            got.append(manager.recv(1024).decode())
    except BlockingIOError:
        return got


def test_a_manager_that_does_not_read_drops_messages_instead_of_blocking(monkeypatch, tmp_path, caplog):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        _fresh_address(monkeypatch, path)
        sent = [sdnotify.status(f"step {i}") for i in range(40)]      # would block at the 11th
        assert sent[0] is True and sent[-1] is False
        assert sdnotify._dropped == sent.count(False) > 0
        assert "the service manager's queue is full" in caplog.text
        got = _drain(manager)
        assert got == [f"STATUS=step {i}" for i in range(sent.count(True))]


def _fill() -> int:
    """STATUS= lines until the manager's queue (net.unix.max_dgram_qlen) is full: how many went."""
    n = 0
    while sdnotify.status(f"step {n}"):
        n += 1
        assert n < 10000
    return n


def test_ready_waits_for_room_in_a_full_queue_and_arrives(monkeypatch, tmp_path):
    """PID 1 busy at boot, its queue full of STATUS= lines: READY=1 is not dropped with them (the
    unit would stay "activating" until TimeoutStartSec=), it goes as soon as the manager reads."""
    import threading

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        _fresh_address(monkeypatch, path)
        queued = _fill()
        assert queued > 0 and sdnotify._dropped == 1          # a STATUS= alone: dropped at once
        reader = threading.Timer(0.5, lambda: [manager.recv(1024) for _ in range(3)])
        reader.start()
        t0 = time.monotonic()
        assert sdnotify.ready("running") is True
        assert time.monotonic() - t0 > 0.3          # it waited for the manager (a lower bound only)
        reader.join()
        got = _drain(manager)
        assert got[-1].startswith("READY=1\nSTATUS=running\nMAINPID=")
        assert len(got) == queued - 3 + 1


def test_a_state_change_the_manager_never_takes_is_given_up_with_a_log_line(monkeypatch, tmp_path, caplog):
    """Bounded: a manager that never reads has RELOADING=1 and STOPPING=1 given up after
    RETRY_SECONDS, said in the log, and lb goes on."""
    path = tmp_path / "notify"
    monkeypatch.setattr(sdnotify, "RETRY_SECONDS", 0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        _fresh_address(monkeypatch, path)
        _fill()
        for send in (sdnotify.reloading, lambda: sdnotify.stopping("stopping")):
            t0 = time.monotonic()
            assert send() is False
            assert time.monotonic() - t0 >= 0.25    # it waited its RETRY_SECONDS (a lower bound only)
        assert "the service manager took no message for 0.3 s: RELOADING=1" in caplog.text
        assert "STOPPING=1, STATUS=stopping lost" in caplog.text


def test_listener_reads_more_than_the_queue_holds(monkeypatch):
    listener = sdnotify.Listener()
    try:
        _fresh_address(monkeypatch, listener.path)
        for i in range(30):                  # nobody calls poll(): the reader thread empties the queue
            assert sdnotify.reloading()
            assert sdnotify.ready(f"running {i}")
            for _ in range(300):              # bounded: up to 30 s for the two to be read
                if len(listener.messages) == 2 * (i + 1):
                    break
                time.sleep(0.1)
        fields = [f for _, f in listener.messages]
        assert len(fields) == 60 and fields[0]["RELOADING"] == "1" and fields[-1]["READY"] == "1"
        assert len(listener.poll(0)) == 60 and listener.poll(0) == []
    finally:
        listener.close()


def test_own_unit_is_the_service_of_this_process_cgroup(tmp_path):
    """`lb run --on-sigterm systemd` without --unit: the service whose cgroup holds the process."""
    from lb import sdnotify

    f = tmp_path / "cgroup"
    f.write_text("0::/system.slice/system-lb.slice/lb@web.service\n")
    assert sdnotify.own_unit(str(f)) == "lb@web.service"
    f.write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert sdnotify.own_unit(str(f)) is None
    assert sdnotify.own_unit(str(tmp_path / "missing")) is None


def test_watchdog_interval_is_this_process_and_leaves_the_environment(monkeypatch, tmp_path):
    """WatchdogSec= as systemd passes it: WATCHDOG_USEC for the process WATCHDOG_PID names
    (another's -- a parent's, inherited -- is not ours to ping); both variables leave the
    environment with NOTIFY_SOCKET at the first message, so health-check programs do not get
    them."""
    import os
    for pid, want in ((os.getpid(), 3.0), (None, 3.0), (1, None)):
        _fresh_address(monkeypatch, tmp_path / "notify")
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        if pid is None:
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
        else:
            monkeypatch.setenv("WATCHDOG_PID", str(pid))
        sdnotify.status("x")
        assert "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ
        assert sdnotify.watchdog_interval() == want


def test_reloading_carries_its_monotonic_time(monkeypatch, tmp_path):
    """RELOADING=1 with MONOTONIC_USEC= (sd_notify(3)): systemd >= 253 compares it with the time
    it asked for the reload, and under Type=notify-reload takes a RELOADING=1 without it for no
    answer.  CLOCK_MONOTONIC in microseconds, taken as the message is sent."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        _fresh_address(monkeypatch, path)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert sdnotify.reloading() is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        (got,) = _drain(manager)
    fields = dict(line.split("=", 1) for line in got.splitlines())
    assert fields["RELOADING"] == "1", got
    assert "MONOTONIC_USEC" in fields, got
    assert fields["MONOTONIC_USEC"].isdigit() and before <= int(fields["MONOTONIC_USEC"]) <= after, (before, got, after)
