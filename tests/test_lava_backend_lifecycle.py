"""Process lifecycle of Lava runs: Ctrl+C, SIGTERM, exit without stop.

Each case runs a converted network in a child Python in its own process
group, as a terminal would, signals the group mid-run and checks that the
group is gone within seconds, with no shared memory left behind.
"""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default

CHILD = textwrap.dedent("""
    import signal
    import sys
    # Ctrl+C as in a terminal's Python, also when this suite runs where
    # SIGINT is ignored (started with & from a script): an ignored SIGINT
    # is inherited, and Python then installs no KeyboardInterrupt handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava_spiked import convert
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0][:32],
                  progress=False)
    x, cfg = splits["test"][0], Loihi2SimCfg(select_tag="fixed_pt")
    if sys.argv[1] == "with":
        with net:
            net.infer(x[:1], cfg, progress=False)
            print("ready", flush=True)
            net.infer(x[:500], cfg, progress=False)
    elif sys.argv[1] == "early":  # interrupted while Lava compiles, forks
        with net:
            print("ready", flush=True)
            net.infer(x[:500], cfg, progress=False)
    else:  # never stopped: exits while the Lava processes still run
        net.infer(x[:1], cfg, progress=False)
        print("ready", flush=True)
""")


def _segments() -> set:
    return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")}


def _orphaned(before: set) -> set:
    """Shared-memory segments created since ``before`` that no living
    process maps (other Lava runs on the machine keep theirs mapped)."""
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                mapped.update(line.rsplit("/", 1)[-1].strip()
                              for line in maps if "/dev/shm/psm_" in line)
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return _segments() - before - mapped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("case, sig, delay", [
    ("with", signal.SIGINT, 1.0), ("with", signal.SIGTERM, 1.0),
    ("exit", None, 0.0), ("with", signal.SIGKILL, 1.0),
    # the first second of a run: the processes are built and compiled
    # (until about 0.25 s here), then Lava forks the runtime and each
    # block (until about 1 s); an interrupt raised at once could be lost
    # in a garbage collector's callback or while the parent forks
    ("early", signal.SIGINT, 0.05), ("early", signal.SIGINT, 0.2),
    ("early", signal.SIGINT, 0.4), ("early", signal.SIGINT, 0.8)])
def test_signal_or_exit_leaves_no_process(tmp_path, case, sig, delay):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    before = _segments()
    child = subprocess.Popen([sys.executable, str(script), case],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready", \
            child.stderr.read()
        time.sleep(delay)  # "with": inside the 500-sample run
        if sig == signal.SIGKILL:  # the parent alone, as a crash would
            os.kill(child.pid, sig)
        elif sig is not None:
            os.killpg(child.pid, sig)
        # an interrupt stops a network within seconds (at most
        # STOP_TIMEOUT, 20 s, then its processes are terminated), never
        # after the 500 samples (a minute or more)
        child.wait(timeout=45)
        deadline = time.monotonic() + 10
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(child.pid), "Lava processes left behind"
    finally:
        if _group_alive(child.pid):
            os.killpg(child.pid, signal.SIGKILL)
        child.kill()  # and reaped: no zombie left for later tests
        child.wait(timeout=10)
    err = child.stderr.read()
    if sig is None:
        assert child.returncode == 0, err
    elif sig == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL
    else:  # the interrupt propagated after the network stopped
        assert "KeyboardInterrupt" in err, (child.returncode, err)
    assert "did not stop cleanly" not in err or sig == signal.SIGTERM, err
    assert not _orphaned(before), "shared memory left behind"


@pytest.fixture(scope="module")
def net():
    splits = digits_splits()
    network = convert(load_default(), splits["calibration"][0][:32],
                      progress=False)
    yield network
    network.stop()


@pytest.mark.slow
def test_run_after_stop_rebuilds(net):
    x = digits_splits()["test"][0][:1]
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    first = net.infer(x, cfg, progress=False)
    old = net.lava("fixed_pt")
    net.stop()
    net.stop()  # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        old.run(None, cfg)  # the stopped processes refuse, never segfault
    np.testing.assert_array_equal(net.infer(x, cfg, progress=False), first)
    # a running network pickles without its processes; the copy runs alike
    clone = pickle.loads(pickle.dumps(net))
    assert clone.processes == {} and net.processes
    net.stop()
    with clone:
        np.testing.assert_array_equal(clone.infer(x, cfg, progress=False),
                                      first)


def test_forks_warn_of_no_threads(net):
    """Python 3.12+ warns on every fork from a process with threads; the
    threads at Lava's forks are torch's and OpenBLAS's idle workers (kept
    alive here by a torch product), which the children never use, so
    that one warning is filtered while Lava forks (every other stays):
    a run warns of nothing on any Python (lava-spiked's own bars start no
    thread: test_progress)."""
    import warnings

    import torch

    from lava_spiked.lava_backend.lifecycle import _forks_from_library_threads
    torch.ones(256, 256) @ torch.ones(256, 256)  # wakes torch's workers
    x = digits_splits()["test"][0][:1]
    net.stop()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"), progress=False)
        net.stop()
        with _forks_from_library_threads():  # the message of 3.12 and 3.13
            warnings.warn(f"This process (pid={os.getpid()}) is multi-"
                          "threaded, use of fork() may lead to deadlocks in "
                          "the child.", DeprecationWarning)
            warnings.warn("another", DeprecationWarning)
    said = [str(w.message) for w in seen]
    assert [m for m in said if "multi-threaded" in m] == [], said
    assert "another" in said


def test_stop_without_a_thread_at_exit(net, monkeypatch):
    """At interpreter exit Python 3.12+ starts no thread, so the stop of a
    network never stopped runs in the main thread under an alarm: it
    stops cleanly, leaving no process. (Here on any Python: the stop's
    watchdog thread is refused as at exit.)"""
    import threading
    import warnings

    from conftest import lava_children
    from lava_spiked.lava_backend import lifecycle
    x = digits_splits()["test"][0][:1]
    net.stop()
    net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"), progress=False)
    assert lava_children()

    def refused(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")
    monkeypatch.setattr(threading.Thread, "start", refused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "did not stop cleanly" fails
        net.stop()
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while lava_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lava_children()
    assert lifecycle._within(lambda: None, 1.0)
    start = time.monotonic()
    assert not lifecycle._within(lambda: time.sleep(5), 0.2)
    assert time.monotonic() - start < 2


def test_stop_reads_past_replies_an_interrupt_left():
    """An interrupted run leaves its DONE unread, and TERMINATED may come
    a moment later: the stop reads until TERMINATED from every runtime
    service, where Lava's own stop raises ("Runtime Received [0.]")."""
    import types

    from lava.magma.runtime.mgmt_token_enums import (MGMT_COMMAND,
                                                     MGMT_RESPONSE)
    from lava.magma.runtime.runtime import Runtime

    from lava_spiked.lava_backend.lifecycle import _stop_cleanly

    class Port:
        def __init__(self, replies):
            self.replies, self.sent = list(replies), []

        def recv(self):
            return self.replies.pop(0)

        def probe(self):  # TERMINATED not there yet
            return False

        def send(self, data):
            self.sent.append(data)

    def runtime():
        done = types.SimpleNamespace(called=[])
        rt = types.SimpleNamespace(
            _is_started=True, _is_running=True,
            runtime_to_service=[Port([])],
            service_to_runtime=[Port([MGMT_RESPONSE.DONE,
                                      MGMT_RESPONSE.TERMINATED])],
            _open_ports=[],
            _messaging_infrastructure=types.SimpleNamespace(
                stop=lambda: done.called.append("messaging")),
            _watchdog_manager=types.SimpleNamespace(
                stop=lambda: done.called.append("watchdog")))
        rt.join = lambda: done.called.append("join")
        return rt, done

    rt, done = runtime()
    with pytest.raises(RuntimeError, match="Runtime Received"):
        Runtime.stop(rt)  # Lava's own
    rt, done = runtime()
    _stop_cleanly(rt)
    assert done.called == ["join", "messaging", "watchdog"]
    assert np.array_equal(rt.runtime_to_service[0].sent[0],
                          MGMT_COMMAND.STOP)
    assert not rt._is_started and not rt._is_running
