"""
Requests in flight, so that a stopping engine lets them finish.

On SIGTERM the engine stops listening first, then waits for the requests
in flight (a C{docker start} waits for the ME to boot) before it stops the
agency driver and closes the store.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site

log = Logger()

#: Seconds a stopping engine waits for requests in flight. Streams that
#: never end by themselves (C{logs -f}, C{events}, C{attach}) are cut
#: after this time.
DRAIN_TIMEOUT = 5.0


class InFlightRequests:
    """
    A count of the requests that a wrapped resource is serving.
    """

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[Deferred] = []

    def begin(self, request: Any) -> None:
        """
        Count a request until it finishes or its connection is lost.
        """
        self.count += 1
        request.notifyFinish().addBoth(self._end)

    def _end(self, _: Any) -> None:
        self.count -= 1
        if self.count == 0:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def wait(self, clock: Any, timeout: float) -> Deferred:
        """
        Wait until no request is in flight, or C{timeout} seconds.

        @return: a Deferred firing with C{None} in both cases; a timeout is
            logged with the count of requests cut.
        """
        d: Deferred = Deferred()
        if self.count == 0:
            d.callback(None)
            return d
        log.info(
            "Waiting up to {timeout} s for {count} request(s) in flight",
            timeout=timeout,
            count=self.count,
        )
        self._waiters.append(d)

        def expire() -> None:
            if d in self._waiters:
                self._waiters.remove(d)
                log.warn(
                    "Stopping with {count} request(s) still in flight",
                    count=self.count,
                )
                d.callback(None)

        call = clock.callLater(timeout, expire)
        d.addBoth(_cancel_call, call)
        return d


def _cancel_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


class EngineSite(Site):
    """
    A L{Site} that counts its requests in flight in C{requests}.
    """

    def __init__(self, resource: IResource, requests: InFlightRequests) -> None:
        super().__init__(resource)
        self.requests = requests

    def acceptableProtocols(self) -> list[bytes]:
        # Site offers h2 in TLS ALPN when the h2 package is installed, but
        # attach and exec take over an HTTP/1.1 connection.
        return [b"http/1.1"]

    def getResourceFor(self, request: Any) -> IResource:
        # Request.process calls this once per request, before any rendering.
        self.requests.begin(request)
        return super().getResourceFor(request)
