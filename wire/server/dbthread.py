"""The one thread a store's database connection lives on.

Database drivers block (an fsync, a round trip to PostgreSQL), and the
reactor thread also carries STUN and relay frames: it must never wait on
them. Every database call of a store runs here, in the order it was asked,
on the one connection this thread opened and alone uses.

Until the reactor runs (``serving`` False: loading at startup, tests on a
fake clock) a call waits for its answer and returns a Deferred that has
already fired, so startup code and in-memory tests use the same
asynchronous interface; once serving, answers come back through
``reactor.callFromThread``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

T = TypeVar("T")


class DatabaseThread:
    def __init__(self, reactor: Any, name: str = "wire-db"):
        self._reactor = reactor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.serving = False

    def serve(self) -> None:
        """The reactor runs: from now on, calls answer asynchronously (a fake
        clock has no threads to answer through: calls keep waiting)."""
        self.serving = IReactorThreads.providedBy(self._reactor)

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        future = self._executor.submit(work, *args)
        if not self.serving:
            return _settled(future)
        done: Deferred[T] = Deferred()
        future.add_done_callback(lambda f: self._reactor.callFromThread(_fire, done, f))
        return done

    def run_blocking(self, work: Callable[..., T], *args: Any) -> T:
        """Startup and shutdown only: waits for the answer on the calling thread."""
        return self._executor.submit(work, *args).result()

    def stop(self) -> None:
        """After the queued calls have run."""
        self._executor.shutdown(wait=True)


def _settled(future: Future) -> Deferred:
    try:
        return succeed(future.result())
    except BaseException:
        return fail(Failure())


def _fire(done: Deferred, future: Future) -> None:
    error = future.exception()
    if error is None:
        done.callback(future.result())
    else:
        done.errback(Failure(error))


def result_now(d: Deferred[T]) -> T:
    """The result of ``d``, which has fired (startup: the store answers at
    once before the reactor serves); its failure raised."""
    results: list = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("result_now: the Deferred has not fired (is the store serving already?)")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
