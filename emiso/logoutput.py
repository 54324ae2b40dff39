"""
Log observers for the places the engine runs: the systemd journal and the
interactive CLI, whose standard output belongs to the command output.
"""

import os
import sys
from typing import IO

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsText,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

#: syslog priorities of the log levels; journald reads a C{<N>} prefix on
#: each line of standard output as the priority (C{SyslogLevelPrefix=yes},
#: its default).
SYSLOG_PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}

#: The log file of the interactive CLI, in the data folder.
INTERACTIVE_LOG_NAME = "interactive.log"


def _journal_line(event: dict) -> str | None:
    text = eventAsText(event, includeTimestamp=False, includeSystem=True)
    if not text:
        return None
    priority = SYSLOG_PRIORITIES.get(event.get("log_level"), 6)
    # Each line becomes a journal entry: tracebacks keep their priority.
    return "".join(f"<{priority}>{line}\n" for line in text.splitlines())


def plain_observer(stream: IO[str]) -> ILogObserver:
    """
    Build an observer that writes each event as C{<PRIORITY>[system] text},
    without a timestamp, because the journal adds its own.
    """
    return FileLogObserver(stream, _journal_line)


def journal_observer() -> ILogObserver:
    """
    Build the observer for the systemd journal on the process's standard
    output; pass it to twistd as C{--logger=emiso.logoutput.journal_observer}.

    twistd calls this factory before it redirects C{sys.stdout} into the
    log, so the observer writes to the real standard output.
    """
    return plain_observer(sys.stdout)


def stdout_is_journal(
    environment: dict[str, str] | None = None, descriptor: int = 1
) -> bool:
    """
    Tell whether standard output is connected to the systemd journal:
    systemd sets C{JOURNAL_STREAM} to the device and inode numbers of that
    stream, as documented in systemd.exec(5).

    @param descriptor: the file descriptor of standard output.
    """
    environment = os.environ if environment is None else environment
    value = environment.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(descriptor)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def interactive_observer(data_dir: str) -> ILogObserver:
    """
    Build the observer of the interactive CLI: a log file in the data
    folder, rotated by size, so that log lines never mix with the output
    of the commands.
    """
    os.makedirs(data_dir, exist_ok=True)
    log_file = LogFile(INTERACTIVE_LOG_NAME, data_dir)
    return textFileLogObserver(log_file)
