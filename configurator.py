"""Typed settings from defaults, TOML config files and `--key=value` flags.

    python train.py config/kjv.toml --max_iters=500 --hidden_size=512

Settings are dataclass fields declared with `setting(default, help)`. Later sources win:
defaults, then each config file in order, then flags. Unknown keys and values of the wrong
type are errors that name the key, the value and the source.
"""
import argparse
import dataclasses
import difflib
import sys
import tomllib


class ConfigError(ValueError):
    pass


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """For the scripts that take argparse flags (prepare scripts, benchmarks): --help keeps
    the docstring's layout and shows every default."""


def setting(default, help, derived=False):
    """A dataclass field with a default and a one-line reason, shown by --help.

    A `derived` field is filled in by the program (e.g. from the data), not by the user.
    """
    return dataclasses.field(default=default, metadata={"help": help, "derived": derived})


def _settable(config):
    return [f for f in dataclasses.fields(config) if not f.metadata.get("derived")]


def _cast(name, value, kind, source):
    """`value` (a flag's string or a TOML value) as type `kind`, or ConfigError."""
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
        else:
            try:
                return kind(text)
            except ValueError:
                pass
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {name}={value!r} is not a valid {kind.__name__}")


def help_text(configs, usage):
    lines = [usage, "", "settings (--key=value; defaults shown):"]
    for config in configs:
        for f in _settable(config):
            flag = f"--{f.name}={getattr(config, f.name)}"
            lines.append(f"  {flag:<28} {f.type.__name__:<5}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def configure(configs, argv, usage):
    """Apply config files and flags from `argv` to the dataclass instances `configs`.

    Returns the set of keys that were set explicitly. Prints help and exits on -h/--help.
    """
    fields = {f.name: (config, f) for config in configs for f in _settable(config)}
    explicit = set()

    def assign(name, value, source):
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting {name!r}{hint}")
        config, f = fields[name]
        setattr(config, name, _cast(name, value, f.type, source))
        explicit.add(name)

    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(configs, usage))
            sys.exit(0)
        if arg.startswith("--"):
            if "=" not in arg:
                raise ConfigError(f"{arg}: flags take the form --key=value")
            name, value = arg[2:].split("=", 1)
            assign(name, value, arg)
        elif arg.endswith(".toml"):
            try:
                with open(arg, "rb") as f:
                    table = tomllib.load(f)
            except OSError as err:
                raise ConfigError(f"{arg}: {err.strerror}") from None
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{arg}: {err}") from None
            except UnicodeDecodeError as err:
                raise ConfigError(f"{arg}: not UTF-8 (byte offset {err.start})") from None
            for name, value in table.items():
                assign(name, value, arg)
        else:
            raise ConfigError(f"{arg}: expected a config/*.toml file or --key=value")
    return explicit


def require(condition, message):
    """Raise ConfigError(message) unless `condition`; for impossible values."""
    if not condition:
        raise ConfigError(message)


def available_memory():
    """The bytes of memory this machine has free (MemAvailable), or None where unknown: what
    the memory checks of settings compare against, before anything is allocated."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
