"""Test doubles shared by the test modules: a reactor that fakes process spawning.

L{ProcessMemoryReactor} records each C{spawnProcess} call and hands the
protocol a L{FakeProcessTransport}; the test then drives the "process" by
simulating its stdout, stderr and exit.
"""

from __future__ import annotations

import attr
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IAddress, IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IAddress)
@attr.s(auto_attribs=True, frozen=True)
class FakeProcessAddress:
    """The address of a fake process transport (a process has no peer)."""


@implementer(IProcessTransport)
class FakeProcessTransport:
    """
    A process transport that records what the protocol does to the process.

    @ivar protocol: the process protocol connected to this transport.
    @ivar executable: the executable passed to C{spawnProcess}.
    @ivar args: the argument list passed to C{spawnProcess}.
    @ivar env: the environment passed to C{spawnProcess}.
    @ivar stdin: the bytes written to the child's stdin, in order.
    @ivar signals: the signals sent with C{signalProcess}, in order.
    @ivar stdin_closed: True once stdin was closed.
    @ivar lost: True once C{loseConnection} was called.
    @ivar ended: True once the process exit was simulated.
    @ivar pid: the process id, None after the exit (as on a real transport).
    @ivar original_pid: the process id given at spawn time.
    """

    def __init__(self, protocol, executable, args, env, pid: int) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = env
        self.pid: int | None = pid
        self.original_pid = pid
        self.stdin: list[bytes] = []
        self.signals: list[str | int] = []
        self.closed_fds: list[int] = []
        self.stdin_closed = False
        self.lost = False
        self.ended = False

    # ITransport

    def write(self, data: bytes) -> None:
        if self.stdin_closed:
            raise RuntimeError("write to the closed stdin of a fake process")
        self.stdin.append(data)

    def writeSequence(self, data) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.lost = True
        self.closeStdin()

    def getPeer(self) -> FakeProcessAddress:
        return FakeProcessAddress()

    def getHost(self) -> FakeProcessAddress:
        return FakeProcessAddress()

    # IProcessTransport

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def closeChildFD(self, descriptor: int) -> None:
        self.closed_fds.append(descriptor)
        if descriptor == 0:
            self.stdin_closed = True

    def writeToChild(self, childFD: int, data: bytes) -> None:
        if childFD != 0:
            raise KeyError(childFD)
        self.write(data)

    def signalProcess(self, signalID: str | int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    # Test helpers

    def written_text(self) -> str:
        """Return everything written to stdin so far, decoded as UTF-8."""
        return b"".join(self.stdin).decode("utf-8")

    def send_stdout(self, data: bytes) -> None:
        """Deliver C{data} to the protocol as if the process wrote it to stdout."""
        self.protocol.childDataReceived(1, data)

    def send_stderr(self, data: bytes) -> None:
        """Deliver C{data} to the protocol as if the process wrote it to stderr."""
        self.protocol.childDataReceived(2, data)

    def exit(self, status: int = 0, signal: int | None = None) -> None:
        """
        Simulate the end of the process, with the calls a real reactor makes.

        @param status: the exit status (ignored when C{signal} is given).
        @param signal: the number of the signal that killed the process.
        """
        if self.ended:
            raise RuntimeError("the fake process has already ended")
        self.ended = True
        self.pid = None
        if signal is None and status == 0:
            reason = Failure(ProcessDone(status))
        else:
            exit_code = status if signal is None else None
            reason = Failure(ProcessTerminated(exit_code, signal))
        for fd in (0, 1, 2):
            self.protocol.childConnectionLost(fd)
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)


@implementer(IReactorProcess)
class ProcessMemoryReactor(MemoryReactorClock):
    """
    A memory reactor with a clock that also fakes C{spawnProcess}.

    @ivar processes: one L{FakeProcessTransport} per C{spawnProcess} call.
    @ivar spawn_error: if set, the next C{spawnProcess} call raises it.
    """

    def __init__(self, first_pid: int = 1000) -> None:
        super().__init__()
        self.processes: list[FakeProcessTransport] = []
        self.spawn_error: Exception | None = None
        self._next_pid = first_pid

    def spawnProcess(
        self,
        processProtocol,
        executable,
        args=(),
        env=None,
        path=None,
        uid=None,
        gid=None,
        usePTY=False,
        childFDs=None,
    ) -> FakeProcessTransport:
        if self.spawn_error is not None:
            error, self.spawn_error = self.spawn_error, None
            raise error
        transport = FakeProcessTransport(
            processProtocol, executable, args, env, self._next_pid
        )
        self._next_pid += 1
        self.processes.append(transport)
        processProtocol.makeConnection(transport)
        return transport

    @property
    def last_process(self) -> FakeProcessTransport:
        """The transport of the most recent spawn."""
        return self.processes[-1]
