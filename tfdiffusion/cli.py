"""What every binary in tools/ shares: one-line usage errors, `--verbose`, and quiet TensorFlow start-up.

    from tfdiffusion import cli

    def main(argv):
        from tfdiffusion import training  # imports TensorFlow: after the command line is checked
        ...

    if __name__ == "__main__":
        cli.run(main, output_dirs=("workdir",))

`run` parses the flags, checks them and starts TensorFlow before it calls `main`. A usage error
(unknown flag or config key, missing config file, bad variant or value, a directory that cannot be
written) ends the run with one line on stderr, `error: … Received: --flag=value`, and exit status 1.
`--verbose` (or `TFDIFFUSION_VERBOSE=1`) shows the traceback and TensorFlow's whole start-up log
instead. Command-line and config-file problems are found before TensorFlow is imported, so they
fail in about a second.

TensorFlow's native libraries log while they load, before their own log level applies: each of the
two libraries prints the oneDNN notice and "Could not find cuda drivers", and the first device
query logs `failed call to cuInit: … CUDA error` at ERROR level on any host without a GPU driver.
`start_tensorflow` loads TensorFlow with the native stderr sent to a file, then passes every line on
except the duplicates and that cuInit error, which it drops only when the host has no CUDA driver
(TensorFlow said "Could not find cuda drivers", or libcuda cannot be loaded). A real error during
start-up is still printed. Afterwards the INFO
lines of TensorFlow's Python code are dropped; its warnings and errors, and tfdiffusion's own
INFO lines, still show.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

from absl import app, flags
# `is_config_flag` is public API of the submodule, not re-exported by the package.
from ml_collections.config_flags import config_flags

VERBOSE_ENV_VAR = "TFDIFFUSION_VERBOSE"
_TRUE = ("1", "true", "yes", "on")

# -- verbosity ---------------------------------------------------------------------------------------


def verbose_requested(argv, environ=None):
    """True when `--verbose` is on the command line (the last of --verbose/--noverbose wins) or in the env."""
    environ = os.environ if environ is None else environ
    verbose = environ.get(VERBOSE_ENV_VAR, "").strip().lower() in _TRUE
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in ("--verbose", "-verbose"):
            verbose = True
        elif arg in ("--noverbose", "-noverbose"):
            verbose = False
        elif arg.startswith(("--verbose=", "-verbose=")):
            verbose = arg.split("=", 1)[1].strip().lower() in _TRUE
    return verbose


# -- quiet TensorFlow start-up ---------------------------------------------------------------------------
_BEFORE_INIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# absl's native log prefix: severity and date, time, thread, file:line]
_NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ (?P<source>[^\]\s]+)\] (?P<message>.*)$")
_NO_DRIVER = "Could not find cuda drivers"
_CUINIT_FAILED = "failed call to cuInit"


def cuda_driver_missing():
    """True when the CUDA driver library cannot be loaded, so that cuInit can only fail."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def filter_startup_lines(lines, driver_missing=None):
    """The native start-up lines worth showing: no duplicates, no absl notice, no cuInit error without a driver.

    Args:
      lines: the lines TensorFlow's native libraries wrote to stderr.
      driver_missing: whether the host has no CUDA driver; None decides from `lines` (TensorFlow says
        "Could not find cuda drivers") or, when a cuInit error is there, by loading the driver library.
    """
    no_driver = driver_missing
    if no_driver is None:
        no_driver = any(_NO_DRIVER in line for line in lines) or (
            any(_CUINIT_FAILED in line for line in lines) and cuda_driver_missing())
    seen = set()
    kept = []
    for line in lines:
        if line.strip() == _BEFORE_INIT_NOTICE:
            continue
        match = _NATIVE_LOG_LINE.match(line)
        if match:
            key = (match["source"], match["message"])
            if key in seen or (no_driver and match["message"].startswith(_CUINIT_FAILED)):
                continue
            seen.add(key)
        kept.append(line)
    return kept


@contextlib.contextmanager
def filtered_native_stderr():
    """Sends file descriptor 2 to a temporary file in the block, then writes back `filter_startup_lines`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines()
            kept = filter_startup_lines(lines)
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode("utf-8"))


def start_tensorflow(verbose=False):
    """Imports TensorFlow and finds its devices, with the start-up log filtered unless `verbose`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    context = contextlib.nullcontext() if verbose else filtered_native_stderr()
    with context:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the first device query is what calls cuInit
    if not verbose:
        quiet_python_info_logs(os.path.dirname(tf.__file__))


class _DropInfoFrom(logging.Filter):
    """Drops records below WARNING logged from files under `directory`."""

    def __init__(self, directory):
        super().__init__()
        self.directory = os.path.join(os.path.abspath(directory), "")

    def filter(self, record):
        return record.levelno >= logging.WARNING or not os.path.abspath(record.pathname).startswith(self.directory)


def quiet_python_info_logs(directory):
    """Hides the INFO lines TensorFlow's Python code logs (SavedModel renames, saver timings), keeping ours.

    TensorFlow logs through absl's logger as tfdiffusion does, so the records are told apart by the
    file they come from. Warnings and errors from `directory` still show.
    """
    for name in ("absl", "tensorflow"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInfoFrom) and f.directory == os.path.join(os.path.abspath(directory), "")
                   for f in logger.filters):
            logger.addFilter(_DropInfoFrom(directory))


# -- usage errors ------------------------------------------------------------------------------------------
class UsageError(app.UsageError):
    """A bad command line; the message is one line naming the flag and the value received."""


def _received(argv, index):
    """The argument at `index`, with its value when given as a separate argument."""
    arg = argv[index]
    if "=" not in arg and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
        return f"{arg} {argv[index + 1]}"
    return arg


def _flag_value(arg, argv, index, name):
    """The value of flag `name` in argument `index` of `argv`, or None if that argument sets another flag."""
    for prefix in (f"--{name}", f"-{name}"):
        if arg.startswith(prefix + "="):
            return arg[len(prefix) + 1:]
        if arg == prefix and index + 1 < len(argv):
            return argv[index + 1]
    return None


def check_config_files(argv, flag_values=flags.FLAGS):
    """Raises UsageError when a config-file flag of `argv` names a file that does not exist."""
    names = [name for name in flag_values if config_flags.is_config_flag(flag_values[name])]
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        for name in names:
            value = _flag_value(arg, argv, index, name)
            if value is None:
                continue
            path = value.split(":", 1)[0]
            if not os.path.isfile(path):
                reason = "is a directory" if os.path.isdir(path) else "does not exist"
                raise UsageError(f"The config file {path!r} {reason}. Received: --{name}={value}")


_DID_YOU_MEAN = re.compile(r'Did you mean "(?P<suggestion>[^"]+)" instead of "(?P<key>[^"]+)"')
_QUOTED_KEY = re.compile(r"^'(?P<key>[^']+)'")


def _innermost_message(error):
    """The text of an ml_collections KeyError, which arrives wrapped in an AttributeError."""
    message = error
    while isinstance(message, BaseException):
        message = message.args[0] if message.args else ""
    return str(message)


def describe_unknown_key(error, argv):
    """One line for the KeyError/AttributeError ml_collections raises on an unknown config key, or None."""
    text = _innermost_message(error)
    match = _DID_YOU_MEAN.search(text) or _QUOTED_KEY.search(text)
    if not match:
        return None
    key = match["key"]
    hint = f' (did you mean "{match["suggestion"]}"?)' if "suggestion" in match.groupdict() else ""
    for index, arg in enumerate(argv[1:], start=1):
        override = re.match(r"^--?(?P<path>\w+(?:\.\w+)+)(?:=|$)", arg)
        if override and key in override["path"].split("."):
            parts = override["path"].split(".")
            where = ".".join(parts[: parts.index(key)])
            kind = "key" if parts.index(key) == len(parts) - 1 else "section"
            return f"{where} has no {kind} {key!r}{hint}. Received: {_received(argv, index)}"
    return f"Unknown config key {key!r}{hint}."


_FLAG_PREFIX = re.compile(r"^flag (?P<flag>--\S+?=.*?): (?P<rest>.*)$")
_EXCEPTION_NAME = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): ")


def describe_flags_error(error):
    """One line for an absl flags.Error; a config file's traceback inside it is reduced to its last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = _FLAG_PREFIX.match(lines[0])
    if len(lines) == 1 or not first:
        return lines[0]
    cause = _EXCEPTION_NAME.sub("", lines[-1]).strip()
    return f"{cause} (from {first['flag']})"


def parse_flags(argv, flag_values=flags.FLAGS):
    """absl's flags parser with one-line errors; raises UsageError."""
    check_config_files(argv, flag_values)
    try:
        return flag_values(argv)
    except flags.Error as error:
        raise UsageError(describe_flags_error(error)) from error
    except (KeyError, AttributeError) as error:  # ml_collections' unknown config key, raised past absl
        line = describe_unknown_key(error, argv)
        if line is None:
            raise
        raise UsageError(line) from error


def check_output_dir(flag_name, path):
    """Raises UsageError unless `path` is a directory that exists or can be created, and can be written.

    Nothing is created: the nearest existing ancestor must be a directory in which a file can be made.
    """
    received = f"Received: --{flag_name}={path!r}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--{flag_name} must be a directory, but it is a file. {received}")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--{flag_name} cannot be created: {existing!r} is a file. {received}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"--{flag_name} is not writable ({error.strerror}: {existing!r}). {received}") from None


# Exceptions that mean bad input, not a bug: their message is the whole story.
USAGE_EXCEPTIONS = (app.UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                    IsADirectoryError, PermissionError)


def _fail(message):
    sys.stdout.flush()
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.stderr.flush()
    # A TFDS download given up on (`data.prepared_tfds_builder`) leaves its pool's worker threads retrying, and
    # the interpreter's exit would wait minutes for them: a usage error ends the process at once.
    os._exit(1)


def run_job(job, *args):
    """The exit status of a training-like job: 0, or 3 with one line when its loss became NaN/Inf.

    The job keeps its last good checkpoint; TensorFlow is imported here, after the command line was checked.
    """
    from tfdiffusion import training

    try:
        job(*args)
    except training.NonFiniteLossError as error:
        logging.getLogger("absl").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


def run(main, *, output_dirs=(), precheck=None):
    """Runs an absl `main(argv)` as a binary: one-line usage errors (exit 1), `--verbose`, quiet start-up.

    Args:
      main: the binary's main function; it returns the exit status (None means 0).
      output_dirs: names of flags holding directories the binary writes into; each one set is
        checked by `check_output_dir` before TensorFlow starts.
      precheck: an optional function of no arguments run before TensorFlow starts, to refuse bad
        input in a second rather than after TensorFlow's start-up (e.g. `config.validate_config`).
    """
    verbose = verbose_requested(sys.argv)
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean("verbose", False, f"Show tracebacks and TensorFlow's start-up log (or set "
                             f"{VERBOSE_ENV_VAR}=1).")

    def parse(argv):
        try:
            return parse_flags(argv)
        except UsageError as error:
            if verbose:
                raise
            _fail(error)

    def checked_main(argv):
        try:
            if len(argv) > 1:
                raise UsageError(f"Unexpected arguments (flags start with --). Received: {' '.join(argv[1:])}")
            for name in output_dirs:
                if flags.FLAGS[name].value is not None:
                    check_output_dir(name, flags.FLAGS[name].value)
            if precheck is not None:
                precheck()
            start_tensorflow(verbose)
            return main(argv)
        except USAGE_EXCEPTIONS as error:
            if verbose:
                raise
            _fail(error)

    app.run(checked_main, flags_parser=parse)
