"""The OS processes of a Lava network and their signals: the one run/stop
routine (:class:`Runner`).

Lava runs every ProcessModel in its own OS process, forked when the network
first runs. A terminal's Ctrl+C reaches the whole process group; a child
that dies of it leaves the parent waiting forever on a channel. So the
children are forked ignoring SIGINT and only this (parent) process handles
it: the interrupt stops the network (bounded wait, then the children are
terminated) and propagates; one that arrives while Lava forks the children,
or while the host reads or writes a Var, waits until the last child exists
or that exchange is complete. SIGTERM during a run
or an inference call does the same, and a
finaliser stops a network still running when the interpreter exits. If the
parent dies without a word (``kill -9``, a crash), Linux kills the
children (``PR_SET_PDEATHSIG``), so none is left orphaned.
"""
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import typing as ty
import warnings
import weakref


class Runner:
    """The one run/stop routine of a Lava network, keyed by any of its
    processes: every failure or interrupt stops all processes before it
    propagates (see the module docstring)."""

    def __init__(self, process: ty.Any) -> None:
        self.process = process
        self.started = self.stopped = False
        #: seconds taken by Lava's compile and by its runtime's start-up
        #: (forking the processes, building the models), once started
        self.timings: ty.Dict[str, float] = {}
        self._finalizer: ty.Optional[weakref.finalize] = None

    def run(self, condition, run_cfg) -> None:
        """Run as ``Process.run`` does.

        Raises
        ------
        RuntimeError
            If the network was stopped (its processes are gone).
        """
        if self.stopped:
            raise RuntimeError("this Lava network was stopped; build a new "
                               "one (SpikingNetwork.run and infer do)")
        try:
            with terminate_raises():
                if self.process.runtime is None:
                    self._start(run_cfg)
                self.process.run(condition=condition)
            self.started = True
        except BaseException:
            self.stop()
            raise

    def _start(self, run_cfg) -> None:
        """Compile, then fork the children with SIGINT ignored; register
        the exit-time stop. A Ctrl+C meanwhile is held until the last
        child exists, then delivered (the caller stops the network): raised
        at once it could be lost, in a garbage collector's callback (which
        Python reports and ignores) during the compile, or in the parent
        while it ignores SIGINT for the fork."""
        t0 = time.perf_counter()
        with uninterrupted():
            executable = self.process.compile(run_cfg)
            t1 = time.perf_counter()
            with _children_ignore_sigint(), _forks_from_library_threads():
                self.process.create_runtime(executable=executable)
        self.timings = dict(compile_s=t1 - t0,
                            start_s=time.perf_counter() - t1)
        self._finalizer = weakref.finalize(self, _stop_runtime,
                                           self.process.runtime)

    def stop(self) -> None:
        """Stop all processes (idempotent; see :func:`_stop_runtime`)."""
        self.stopped = True
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_runtime once, then detaches
        elif self.process.runtime is not None:
            _stop_runtime(self.process.runtime)


#: Seconds that a stop may take before the children are terminated (a
#: clean stop of a large network on a loaded 2-core machine takes several).
STOP_TIMEOUT = 20.0


def _stop_runtime(runtime, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a Lava runtime; if it does not answer within ``timeout``
    seconds (a child died, or an interrupt cut a message exchange short),
    terminate its OS processes and its shared-memory manager instead.
    Lava's stop runs in a watchdog thread, or at interpreter exit (where
    Python 3.12+ starts no thread) in this one under an alarm."""
    if getattr(runtime, "_stopped_by_lava_spiked", False):
        return
    runtime._stopped_by_lava_spiked = True
    errors: ty.List[Exception] = []

    def stop() -> None:
        try:
            _stop_cleanly(runtime)
        except Exception as err:  # reported below, after the cleanup
            errors.append(err)

    actors = getattr(runtime, "_messaging_infrastructure", None)
    actors = actors.actors if actors is not None else []
    if not getattr(runtime, "_is_started", True):  # forked, never run (an
        # interrupt right after the fork): its processes wait for a first
        # command, and Lava's stop would join them forever
        _terminate(runtime, actors, timeout)
        return
    worker = threading.Thread(target=stop, daemon=True,
                              name="lava-spiked-stop")
    try:
        worker.start()
    except RuntimeError:  # Python 3.12+ starts no thread at interpreter
        # exit (atexit runs this for a network never stopped); the main
        # thread stops it, bounded by an alarm
        if _one_died(actors):
            errors.append(ChildProcessError("a Lava process died"))
        elif not _within(stop, timeout):
            errors.append(TimeoutError(f"no answer in {timeout} s"))
    deadline = time.monotonic() + timeout
    # a child killed by a signal never answers: stop waiting at once
    while worker.is_alive() and time.monotonic() < deadline and \
            not _one_died(actors):
        worker.join(0.05)
    if worker.is_alive() or errors:
        _terminate(runtime, actors, timeout)
        warnings.warn("Lava did not stop cleanly ("
                      f"{errors[0] if errors else f'no answer in {timeout} s'}"
                      "): its processes were terminated", RuntimeWarning,
                      stacklevel=3)


def _stop_cleanly(runtime) -> None:
    """Lava's ``Runtime.stop``, reading past the replies that an interrupt
    left unread. Lava's own stop reads one reply besides each runtime
    service's TERMINATED and raises on any other: an interrupted run's
    DONE is one, and when TERMINATED comes a moment after it (a loaded
    machine), Lava's check for a second message finds nothing yet and it
    raises ("Runtime Received [0.]"), leaving the processes to be
    terminated. A service that never answers is the caller's watchdog's
    to handle."""
    from lava.magma.runtime.mgmt_token_enums import (MGMT_COMMAND,
                                                     MGMT_RESPONSE,
                                                     enum_equal)
    try:
        if runtime._is_started:
            for send_port in runtime.runtime_to_service:
                send_port.send(MGMT_COMMAND.STOP)
            for recv_port in runtime.service_to_runtime:
                while not enum_equal(recv_port.recv(),
                                     MGMT_RESPONSE.TERMINATED):
                    pass  # a reply to a command before the stop
            runtime.join()
            runtime._is_running = runtime._is_started = False
    finally:
        runtime._messaging_infrastructure.stop()
    runtime._watchdog_manager.stop()


def _terminate(runtime, actors: list, timeout: float) -> None:
    """End a runtime's OS processes (SIGTERM, then SIGKILL after
    ``timeout`` seconds) and its shared-memory manager."""
    running = [a for a in actors if _exitcode(a) is None]
    for actor in running:
        with contextlib.suppress(ValueError):  # closed by Lava meanwhile
            actor.terminate()
    for actor in running:  # Lava's join takes no timeout
        with contextlib.suppress(ValueError):  # closed by Lava meanwhile
            multiprocessing.Process.join(actor, timeout)
        if _exitcode(actor) is None:
            actor.kill()
    with contextlib.suppress(Exception):
        runtime._messaging_infrastructure.smm.shutdown()


class _Late(BaseException):
    """Raised by the alarm of :func:`_within`."""


def _within(fn: ty.Callable[[], None], timeout: float) -> bool:
    """Call ``fn`` in the main thread, cut short by SIGALRM after
    ``timeout`` seconds (a lock or a blocking read that Lava waits on
    returns to Python for the signal); whether it returned in time."""
    def late(signum, frame):
        raise _Late

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fn()
        return True
    except _Late:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_died(actors: list) -> bool:
    """Whether a Lava child ended with an error or a signal: it will never
    answer a stop."""
    return any(_exitcode(a) not in (None, 0) for a in actors)


def _exitcode(actor) -> ty.Optional[int]:
    """Exit code of a Lava child (0 once Lava has joined and closed it;
    None while it runs), read without reaping it: Lava's stop joins the
    children in another thread, and a child reaped here makes that join's
    ``waitpid`` fail and return early, after which Lava's ``close`` raises
    "Cannot close a process while it is still running" (seen often on
    Python 3.13)."""
    try:
        pid, code = actor.pid, actor._popen.returncode
    except (ValueError, AttributeError):  # closed by Lava's own join: it
        return 0  # ended normally
    if code is not None:
        return code
    try:
        info = os.waitid(os.P_PID, pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by Lava's join meanwhile (and
        popen = actor._popen  # closed: None)
        return 0 if popen is None else popen.returncode
    if info is None:
        return None
    killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
    return -info.si_status if killed else info.si_status


#: pid of this process while it forks Lava's children (else None)
_forking_parent: ty.Optional[int] = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _in_lava_child() -> None:
    """In a child forked for Lava: ignore SIGINT (Ctrl+C is the parent's
    to handle), ask Linux for SIGKILL when the parent dies, and exit if it
    died already (before the request)."""
    if _forking_parent is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking_parent:
        os._exit(1)


os.register_at_fork(after_in_child=_in_lava_child)


@contextlib.contextmanager
def _forks_from_library_threads() -> ty.Iterator[None]:
    """While Lava forks its processes: no DeprecationWarning that this
    process has threads (Python 3.12+ warns on every fork then).

    The threads are not ours (lava-spiked's progress bars start none, see
    :mod:`lava_spiked.progress`) but torch's OpenMP workers and numpy's
    OpenBLAS workers, idle between parallel regions. A fork copies only
    the forking thread, and a lock that another thread held stays held in
    the child, which deadlocks only if the child takes that lock. The
    children take none of these: they run Lava's runtime and the numpy
    ProcessModels, never torch (so never OpenMP); OpenBLAS stops its
    workers before a fork and starts new ones in a child (its
    ``pthread_atfork`` handlers); glibc's malloc and CPython's own locks
    are made safe across ``fork`` by glibc and CPython themselves. So this
    fork is safe, and the warning is filtered here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
            r"fork\(\) may lead to deadlocks", DeprecationWarning)
        yield


@contextlib.contextmanager
def _children_ignore_sigint() -> ty.Iterator[None]:
    """While Lava forks its processes: they ignore SIGINT and die with this
    process (:func:`_in_lava_child`; main thread only: the only one where
    Python delivers signals, and Linux ties a child's death signal to the
    thread that forked it, which must outlive the network)."""
    global _forking_parent
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # the children inherit this: SIGTERM (the fallback stop's terminate)
    # ends a child at once
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _forking_parent = os.getpid()
    try:
        yield
    finally:
        _forking_parent = None
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted() -> ty.Iterator[None]:
    """Hold a Ctrl+C back (main thread only), then deliver it: while the
    host reads or writes Vars (Lava moves a Var one element per message,
    and an exchange cut short leaves the runtime service waiting, so the
    network could not stop cleanly) and while a network compiles and
    forks (:meth:`Runner._start`). A second Ctrl+C interrupts at once (the
    children ignore SIGINT, so the exchange normally completes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: ty.List[int] = []

    def hold(signum, frame) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # as it would have been


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_raises() -> ty.Iterator[None]:
    """During a run (or a whole inference call), SIGTERM interrupts like
    Ctrl+C, so the network stops instead of dying with the parent (main
    thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
