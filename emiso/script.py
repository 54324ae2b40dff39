"""
Console scripts C{emiso-engine} and C{emiso_engine}: the engine in the
foreground, and C{emiso-engine certs}.
"""

import sys

from twisted.scripts import twistd

from emiso.logoutput import stdout_is_journal

#: The twistd option that sends the log to the systemd journal without
#: twistd's timestamps.
JOURNAL_LOGGER = "--logger=emiso.logoutput.journal_observer"


def twistd_argv(arguments: list[str], journal: bool) -> list[str]:
    """
    Build the twistd command line that runs the engine in the foreground.

    @param journal: standard output is the systemd journal; the log then
        has no timestamps, because the journal adds its own.
    """
    twistd_options = ["--nodaemon", "--pidfile="]
    if journal:
        twistd_options.append(JOURNAL_LOGGER)
    return ["emiso-engine", *twistd_options, "emiso", *arguments]


def main(argv: list[str] | None = None) -> None:
    """
    Run C{twistd --nodaemon --pidfile= emiso} with the given engine options,
    or the certificate command when the first argument is C{certs}.

    Options before the engine's own (for example C{--logfile}) are not
    accepted here; use C{twistd} directly for those.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["certs"]:
        from emiso.certs import main as certs_main

        sys.exit(certs_main(arguments[1:]))
    sys.argv = twistd_argv(arguments, stdout_is_journal())
    twistd.run()


if __name__ == "__main__":
    main()
