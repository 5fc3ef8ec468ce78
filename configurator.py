"""
The config system shared by prepare.py, train.py and sample.py.

Each script declares its options once, as a dataclass whose fields carry a
default and a trailing `# comment` that is the field's help. That one
declaration drives --help, type checks, and the config saved in checkpoints.

Layers, later wins: dataclass defaults < config files (python files that
assign keys, run as trusted code, like nanoGPT's) < command line
(`--key=value` or `--key value`). Values are parsed with ast.literal_eval,
never eval, and checked against the field's type. Mistakes are UserErrors:
one line that names the key, no traceback.
"""

import ast
import dataclasses
import difflib
import inspect
import os
import re
import sys
import types
import typing


class UserError(Exception):
    """A mistake by the user (bad flag, missing file): shown as one line, exit code 2."""


# ---------------------------------------------------------------------------
# the signal policy of every command: SIGINT and SIGTERM end it with one line and exit code 128 + signal

class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread where the command was, so that every `finally` and
    `except BaseException` on the way out runs: work folders (.partial) are removed, locks released,
    the previous files left as they were. A KeyboardInterrupt, so code that handles Ctrl-C handles both."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


_STOPPING = []  # the signals received since the first one was raised: the exit code is the last one's


def _on_signal(signum, frame):
    _STOPPING.append(signum)
    if len(_STOPPING) == 1:
        raise Interrupted(signum)
    # a second signal while the first one's clean-up runs: let the clean-up finish (it is short: removing
    # a work folder), then exit with this signal's code


def install_signal_handlers():
    """SIGINT and SIGTERM raise Interrupted (once; see _on_signal). configurator.run installs them for
    every command; train.py's loop replaces them with faults.StopRequest while it trains."""
    import signal
    _STOPPING.clear()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_signal)


def signal_line(signum):
    import signal
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def quiet_interrupts():
    """Ctrl-C or SIGTERM while the heavy imports load exits with one line and 128 + signal. Each script
    calls this before importing torch; run() then installs the policy proper."""
    import signal

    def stop(signum, frame):
        print(signal_line(signum), file=sys.stderr)
        sys.exit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)


def run(main):
    """Call main() and turn user mistakes into a one-line error and a non-zero exit. So do faults of
    the machine (a full disk, a folder that cannot be written): they are not bugs, and a traceback
    would hide the one line that says what to do. SIGINT and SIGTERM: one line, exit 128 + signal."""
    install_signal_handlers()
    try:
        main()
    except UserError as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"error: {e}", file=sys.stderr)
        elif not getattr(e, "every_rank", False):  # under torchrun a mistake in the set-up is every process's:
            print(f"error: [rank {rank}] {e}", file=sys.stderr)  # rank 0 says it; others speak for themselves
        sys.exit(2)
    except KeyboardInterrupt as e:
        import signal
        signum = _STOPPING[-1] if _STOPPING else getattr(e, "signum", signal.SIGINT)
        print(signal_line(signum), file=sys.stderr)
        sys.exit(128 + signum)
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader went away (python sample.py | head): not an error
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            except OSError:
                pass
            sys.exit(0)
        print(f"error: {os_error(e)}", file=sys.stderr)
        sys.exit(1)


def os_error(e):
    """One line for a fault of the machine, with what to do about the common ones."""
    import errno
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    advice = {errno.ENOSPC: "free some space or write elsewhere; files already complete were left as they were",
              errno.EDQUOT: "over the disk quota: free some space or write elsewhere; files already complete were left "
                            "as they were",
              errno.EACCES: "check the folder's permissions, or choose another path; nothing there was changed",
              errno.EROFS: "choose a path on a writable file system; nothing there was changed",
              errno.EPERM: "check the permissions, or choose another path; nothing there was changed"}.get(e.errno)
    return f"{what} ({advice})" if advice else what


# ---------------------------------------------------------------------------
# types: what a field accepts, and how a string from the command line becomes it

def _type_name(tp):
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(tp, tp.__name__)


def _coerce(value, tp):
    """Return value converted to type tp, or raise ValueError."""
    if tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except ValueError:
                pass
        raise ValueError
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return value.lower() in ("true", "yes", "1")
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 is a fine iteration count
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (typing.Any,)
        if isinstance(value, (str, int, float)):
            value = [value]  # a single value is a list of one
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError
    raise TypeError(f"unsupported config type {tp}")


_BOOL_WORDS = ("true", "false", "yes", "no", "1", "0")


def _accepts(tp, value):
    try:
        return _coerce(value, tp) == value
    except (ValueError, TypeError):
        return False


def _parse_literal(text):
    """'32' -> 32, 'True' -> True, "['a']" -> ['a'], anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


# ---------------------------------------------------------------------------
# the config dataclass: fields, types and help text

def _fields(cls):
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_help(cls):
    """Help for each field, read from the trailing comment on its line in the class source."""
    helps = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*?#\s?(.*)$", line)
            if m:
                helps[m.group(1)] = m.group(2).strip()
    return helps


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def format_help(cls, prog, usage):
    helps = field_help(cls)
    lines = [f"usage: {prog} {usage}", "", (cls.__doc__ or "").strip(), "", "options (default, meaning):"]
    for f in dataclasses.fields(cls):
        lines.append(f"  --{f.name}={_default(f)!r}".ljust(40) + " " + helps.get(f.name, ""))
    return "\n".join(lines)


def unknown_key(key, valid, where):
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see --help for the valid keys)"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _set(values, fields, key, raw, where, parsed=None):
    if key not in fields:
        raise unknown_key(key, list(fields), where)
    value = parsed
    if value is None:
        value = _parse_literal(raw)
        if fields[key] is str and not isinstance(value, str):
            value = raw  # a string field takes the text as written: --start="1 + 1"
    try:
        values[key] = _coerce(value, fields[key])
    except ValueError:
        raise UserError(f"{key}={raw!r} {where}: expected {_type_name(fields[key])}") from None


# ---------------------------------------------------------------------------
# the parser

def load_config_file(path):
    """Run a config file (trusted code, like nanoGPT's) and return the keys it assigned."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found")
    namespace = {"__file__": path}
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise UserError(f"config file '{path}' line {e.lineno}: {e.msg}") from None
    try:
        exec(code, namespace)
    except SystemExit as e:  # exit() in a config file would end the command having done nothing, with its code
        raise UserError(f"config file '{path}' calls exit({e.code!r}){_where(e, path)}: a config file only sets "
                        f"keys; remove the call") from None
    except Exception as e:
        raise UserError(f"config file '{path}' failed{_where(e, path)}: {type(e).__name__}: {e}") from None
    # keys are the names it assigns; imports and classes are not keys. A lambda derives a key from the
    # final config (`min_lr = lambda c: c.learning_rate / 10`); a def is a helper, unless it has a key's name
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, (types.ModuleType, type))}


def _where(e, path):
    """' at line N' of path in e's traceback, if it got that far."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line else ""


def parse_args(cls, argv=None, prog=None, usage="[config.py ...] [--key=value | --key value ...]"):
    """Build a `cls` from its defaults, config files and command-line arguments."""
    return cls(**parse_overrides(cls, argv, prog, usage))


def parse_overrides(cls, argv=None, prog=None, usage="[config.py ...] [--key=value | --key value ...]"):
    """The keys that config files and command-line arguments set, as a dict.

    A bare argument is a config file. `--key value` takes the next argument, or
    for list fields every argument up to the next `--key`; a bare `--flag` of a
    bool field means True. `--help` prints every key and exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or os.path.basename(sys.argv[0])
    fields = _fields(cls)
    values = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(format_help(cls, prog, usage))
            sys.exit(0)
        if not arg.startswith("--"):
            if arg.startswith("-") and len(arg) > 1:
                raise UserError(f"unknown option '{arg}': options are --key=value (see --help)")
            for key, value in load_config_file(arg).items():
                if isinstance(value, types.FunctionType) and value.__name__ != "<lambda>":
                    if key in fields:  # keys are assigned, never def'd: it would be silently ignored
                        raise UserError(f"config file '{arg}' defines a function '{key}', which sets nothing: "
                                        f"assign the key ({key} = ...), or a lambda to derive it from others")
                    continue  # a helper function
                if callable(value):  # derived: checked once the command line has had its say
                    if key not in fields:
                        raise unknown_key(key, list(fields), f"in {arg}")
                    values[key] = _Derived(value, arg)
                else:
                    _set(values, fields, key, repr(value), f"in {arg}", parsed=value)
            continue
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise unknown_key(key, list(fields), "on the command line")
        if eq:
            _set(values, fields, key, raw, "on the command line")
            continue
        tp, rest = fields[key], argv[i:]
        if typing.get_origin(tp) is list:  # --input a.txt b.txt: every value up to the next --key
            n = next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))
            if n == 0:
                raise UserError(f"--{key} needs at least one value")
            items = rest[:n] if typing.get_args(tp) == (str,) else [_parse_literal(a) for a in rest[:n]]
            _set(values, fields, key, " ".join(rest[:n]), "on the command line", parsed=items)
            i += n
        elif _accepts(tp, True) and (not rest or rest[0].lower() not in _BOOL_WORDS):
            values[key] = True  # a bare --flag
        elif not rest:
            raise UserError(f"--{key} needs a value: --{key}=VALUE")
        else:
            _set(values, fields, key, rest[0], "on the command line")
            i += 1
    return _resolve(cls, values)


class _Derived:
    def __init__(self, fn, where):
        self.fn, self.where = fn, where


def _resolve(cls, values):
    """Evaluate derived keys (lambdas from config files) against the otherwise final config."""
    fields = _fields(cls)
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    done, busy = {}, set()

    class View:  # what a lambda sees: c.key is the final value of key
        def __getattr__(self, key):
            return get(key)

    def get(key):
        if key not in fields:
            raise unknown_key(key, list(fields), "in a derived config value")
        if key not in done:
            value = values.get(key, defaults[key])
            if isinstance(value, _Derived):
                if key in busy:
                    raise UserError(f"config key '{key}' is derived from itself ({value.where})")
                busy.add(key)
                try:
                    result = value.fn(View())
                except UserError:
                    raise
                except Exception as e:
                    raise UserError(f"config key '{key}' (derived in {value.where}) failed: "
                                    f"{type(e).__name__}: {e}") from None
                busy.discard(key)
                _set(done, fields, key, repr(result), f"(derived in {value.where})", parsed=result)
                value = done[key]
            done[key] = value
        return done[key]

    return {key: get(key) for key in values}


def check_types(cls, values):
    """values (a dict from a file, e.g. a checkpoint's config) checked and converted like a command line:
    a wrong type names the key. Keys cls does not have (from another version) are left out."""
    fields, out = _fields(cls), {}
    for key, value in values.items():
        if key in fields:
            _set(out, fields, key, repr(value), "", parsed=value)
    return out


def config_dict(cfg):
    """The config as a plain dict (for checkpoints, wandb and metrics)."""
    return dataclasses.asdict(cfg)
