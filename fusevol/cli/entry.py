"""Where the `fusevol` command starts (the script, `python -m fusevol`).

Importing click and building its commands is most of what a short command
costs, so the commands run most often from scripts (`volume ls`,
`snapshot create`) are run here without it when their line is a plain one:
their options, `--store DIR` anywhere, `-v` in front. Everything else (help,
any other option or command, a usage error) goes to click's command line
(app.py), which has the last word on what a line means; both print the same
(answers.py) and end an error the same way (failure.py).
"""

import sys

# (command, subcommand) -> how many arguments it takes
_PLAIN = {("volume", "ls"): 0, ("snapshot", "create"): 1}


def main(args=None, prog_name=None, **click_options):
    """Run the command line `args` (default sys.argv[1:]); exits."""
    if not click_options:  # as the script runs it: the whole command, then exit
        line = _plain_line(sys.argv[1:] if args is None else list(args))
        if line is not None:
            sys.exit(_run(*line))
    from .app import main as click_main

    return click_main(args, prog_name=prog_name, **click_options)


def configure_logging(verbose: bool, now: bool = True) -> None:
    """Log to stderr: INFO and above, everything with -v. Not `now`: when logging
    is first used (fusevol/logs.py), for commands whose modules all log through
    fusevol.logs: one that logs nothing does not load it."""
    from ..logs import configure

    configure(now=now, level="DEBUG" if verbose else "INFO",
              format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _plain_line(words: list[str]):
    """(verbose, store, command, arguments, as_json) of a line this module runs
    itself, None for any other."""
    verbose, store, as_json, names, arguments = False, None, False, [], []
    words = iter(words)
    for word in words:
        if word == "--store" or word.startswith("--store="):
            store = next(words, "") if word == "--store" else word[len("--store="):]
            if not store or store.startswith("-"):
                return None  # click's to say what that is
        elif word in ("-v", "--verbose") and not names:
            verbose = True
        elif word == "--json" and len(names) == 2:
            as_json = True
        elif word.startswith("-"):
            return None
        elif len(names) < 2:
            names.append(word)
        else:
            arguments.append(word)
    command = tuple(names)
    if _PLAIN.get(command) != len(arguments):
        return None
    return verbose, store, command, arguments, as_json


def _run(verbose: bool, store: str | None, command: tuple, arguments: list, as_json: bool) -> int:
    configure_logging(verbose, now=False)  # the store, the service, the registry: fusevol.logs

    def store_path() -> str:
        from ..store.names import resolve_path

        return resolve_path(store)

    try:
        from . import answers

        if command == ("volume", "ls"):
            from ..service import VolumeService

            data, text = answers.volume_list(VolumeService(store_path()))
        else:
            data, text = answers.snapshot_made(store_path(), arguments[0], as_json)
        if as_json:
            import json

            text = json.dumps(data, indent=2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (Exception, KeyboardInterrupt) as e:
        from .failure import ending

        message, code = ending(e, store_path)
        sys.stderr.write(f"fusevol: {message}\n")
        sys.stderr.flush()
        return code
    return 0
