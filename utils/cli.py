"""How every command-line script ends: a user's mistake is one line, a bug keeps its traceback.

    if __name__ == "__main__":
        run_cli(main, parse_opt)

A user error prints `ERROR: <message>` (one line) on stderr and exits 1; a bad flag that argparse
rejects exits 2 the same way; Ctrl-C prints one line and exits 130. Any other exception is a bug and
propagates with its traceback, a ValueError from the project's own code included. User errors are only:
- `UserError` (defined here) and its subclasses (DatasetError, TeacherMismatchError, ModelSizeError, ...):
  raise one where the message names the problem and the fix;
- FileNotFoundError; `models.checkpoint.CheckpointError` (and UnsafeCheckpointError); yaml errors;
- SystemExit with a message, e.g. `raise SystemExit("--resume: no last.pt found")`.
This module imports nothing heavy: the library classes are looked up in `sys.modules` when an error
arrives (a CheckpointError can only have been raised once models.checkpoint was imported).
"""
import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130

# (module, class) pairs that always mean a user error, resolved lazily from sys.modules.
USER_ERROR_CLASSES = [("models.checkpoint", "CheckpointError"), ("yaml", "YAMLError")]


class UserError(ValueError):
    """A mistake the user can fix (bad flag value, bad file); the message names it and the fix."""


def one_line(message):
    """The message's non-empty lines joined into one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _registered_classes(extra=()):
    found = [getattr(sys.modules.get(module), name, None) for module, name in USER_ERROR_CLASSES]
    return tuple(c for c in found if isinstance(c, type)) + tuple(extra)


def is_user_error(e, extra=()):
    """Whether exception `e` is a user's mistake (one line) rather than a bug (traceback)."""
    return isinstance(e, (UserError, FileNotFoundError) + _registered_classes(extra))


def _print_error(message):
    print(f"ERROR: {one_line(message)}", file=sys.stderr, flush=True)


@contextmanager
def _one_line_usage_errors(prog):
    """argparse prints a usage line plus the error (two lines); print only the error line."""
    original = argparse.ArgumentParser.error

    def error(parser, message):
        _print_error(f"{prog}: {message} (see {prog} --help)")
        sys.exit(USAGE_EXIT)

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_cli(main, parse_opt, user_errors=()):
    """Parse the flags, run `main(opt)` and exit as described in the module docstring.

    `user_errors`: a script's own exception classes that also count as user errors."""
    prog = Path(sys.argv[0]).name
    try:
        with _one_line_usage_errors(prog):
            opt = parse_opt()
        main(opt)
    except KeyboardInterrupt as e:
        print(one_line(e) or f"{prog}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        sys.exit(INTERRUPT_EXIT)
    except SystemExit as e:
        if isinstance(e.code, str):
            _print_error(e.code)
            sys.exit(ERROR_EXIT)
        raise
    except Exception as e:
        if not is_user_error(e, user_errors):
            raise
        _print_error(e)
        sys.exit(ERROR_EXIT)
    sys.exit(0)
