"""Console scripts C{emiso-engine} and C{emiso_engine}: the engine in the foreground."""

import sys

from twisted.scripts import twistd


def main(argv: list[str] | None = None) -> None:
    """
    Run C{twistd --nodaemon --pidfile= emiso} with the given engine options.

    Options before the engine's own (for example C{--logfile}) are not
    accepted here; use C{twistd} directly for those.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["emiso-engine", "--nodaemon", "--pidfile=", "emiso", *arguments]
    twistd.run()


if __name__ == "__main__":
    main()
