"""The `basinlab` command: one module per group of subcommands, listed in COMMANDS.

Exit statuses: 0 done, 1 internal error (a bug; --debug shows the traceback), 2 bad input (one line on
stderr), 3 non-finite loss, 4 a write failed (disk full: the last checkpoint is kept), 128+N stopped by
signal N.
"""
from __future__ import annotations

import errno
import sys

from basinlab.cli import analysis, asgd, data, runs, sweep, train, tuning
from basinlab.cli.options import ArgumentParser
from basinlab.errors import BasinlabError, NonFiniteLossError
from basinlab.utils.schema import shown

COMMANDS = (
    train,      # train, list
    runs,       # evaluate, plot, export
    asgd,       # stability
    analysis,   # sharpness, landscape
    tuning,     # lr-range, autohyper
    sweep,      # sweep, report
    data,       # data download
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="basinlab", description="Train CNN image classifiers and study the minima they find.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for module in COMMANDS:
        module.add_commands(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "trust_model_code", False) is True:  # the user's own word, for this command
            from basinlab.models.registry import trusting_model_code
            with trusting_model_code():
                return args.func(args)
        return args.func(args)
    except (BasinlabError, NonFiniteLossError) as exc:
        if debug:
            raise
        print(f"basinlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:  # an optional package a command needs: say what to install
        if debug:
            raise
        from basinlab.utils.dependencies import what_to_install
        print(f"basinlab: error: {what_to_install(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug or exc.errno != errno.ENAMETOOLONG:
            raise
        print(f"basinlab: error: a path is too long for the file system ({shown(exc.filename, 60)}); give a "
              f"shorter one", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with --debug
        code = getattr(exc, "exit_code", None)  # an interrupted run has its own exit status
        if debug:
            raise
        if code is not None:
            print(f"basinlab: {exc}", file=sys.stderr)
            return code
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        print(f"basinlab: internal error: {type(exc).__name__}: {first} (this is a bug: rerun with --debug for "
              f"the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
