"""What every command line shares: flags made from the configs, shipped flagfiles,
and one runner that maps `DimError`s to exit statuses.

An entry point defines its flags from a config dataclass (names, defaults and
help come from `dim_tf.config`), reads them back into that config, and hands
its main function to `run`:

    cli.define_config_flags(config_lib.ExportConfig)
    def main() -> None:
        export_run(config_lib.ExportConfig(**cli.config_values(config_lib.ExportConfig)))
    if __name__ == "__main__":
        cli.run(main, "dim_tf.export")

`--flagfile` takes a path or the name of a flagfile shipped with dim_tf
(`local_jsd`, `local_jsd.flags` or `configs/local_jsd.flags` from any
directory), so a non-editable install runs the README's commands.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Iterable

from absl import app, flags

from dim_tf import config as config_lib
from dim_tf import errors

FLAGS = flags.FLAGS
_FLAGFILE = "--flagfile"
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")  # absl.app's


def define_config_flags(cls: type, *, exclude: Iterable[str] = (), prefix: str = "",
                        flag_values: flags.FlagValues = FLAGS) -> None:
    """One flag per field of the config dataclass `cls`, `prefix` + its name, with the
    field's default and help text. The flags belong to the calling module, as if it
    had defined them itself: `--help` of an entry point lists them."""
    exclude = set(exclude)
    module_name = _module_name(sys._getframe(1).f_globals)
    for field in dataclasses.fields(cls):
        if field.name not in exclude:
            _define(prefix + field.name, field, flag_values, module_name)


def config_values(cls: type, *, exclude: Iterable[str] = (), prefix: str = "",
                  flag_values: flags.FlagValues = FLAGS) -> dict:
    """{field name: parsed flag value} for the fields of `cls` defined by
    `define_config_flags` (list flags become tuples, as the configs hold them)."""
    exclude = set(exclude)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        value = flag_values[prefix + field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def config_flags(config: object, *, exclude: Iterable[str] = (), prefix: str = "") -> list[str]:
    """The command-line flags that `config_values` reads back as `config` (a config
    dataclass): `--name=value` per field that is set, `--name`/`--noname` for booleans,
    comma-joined lists. For a command run elsewhere, e.g. on the workers of a cluster."""
    exclude = set(exclude)
    arguments = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in exclude or value is None:
            continue
        name = prefix + field.name
        if isinstance(value, bool):
            arguments.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            arguments.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            arguments.append(f"--{name}={value}")
    return arguments


def _module_name(module_globals: dict) -> str:
    """The name absl files a module's flags under (the script's path for __main__)."""
    name = module_globals["__name__"]
    return sys.argv[0] if name == "__main__" else name


def _define(name: str, field: dataclasses.Field, flag_values: flags.FlagValues,
            module_name: str) -> None:
    kind = str(field.type).replace(" ", "")
    default = None if field.default is dataclasses.MISSING else field.default
    if isinstance(default, tuple):
        default = list(default)
    text = field.metadata.get("help", field.name)
    if "choices" in field.metadata:
        text += f" One of: {', '.join(str(c) for c in field.metadata['choices'])}."
    define = (flags.DEFINE_bool if kind.startswith("bool") else
              flags.DEFINE_integer if kind.startswith("int") else
              flags.DEFINE_float if kind.startswith("float") else
              flags.DEFINE_list if kind.startswith("tuple") else flags.DEFINE_string)
    define(name, default, text, flag_values=flag_values, module_name=module_name)


def shipped_flagfile(path: str) -> str | None:
    """The shipped flagfile `path` names (NAME, NAME.flags or configs/NAME.flags), or None."""
    name = path[len("configs/"):] if path.startswith("configs/") else path
    for candidate in (name, name + ".flags"):
        full = os.path.join(config_lib.SHIPPED_CONFIGS_DIR, candidate)
        if os.path.isfile(full):
            return full
    return None


def expand_shipped_flagfiles(argv: list[str]) -> list[str]:
    """`argv` with every `--flagfile=X` that is no file here but names a shipped
    flagfile replaced by that file's flags (nested ones resolved the same way).
    Flagfiles that exist as given are left to absl, as are unknown names (absl
    then reports the missing file)."""
    expanded: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument in (_FLAGFILE, _FLAGFILE[1:]):
            path = next(arguments, "")
        elif argument.startswith((_FLAGFILE + "=", _FLAGFILE[1:] + "=")):
            path = argument.split("=", 1)[1]
        else:
            expanded.append(argument)
            continue
        shipped = None if os.path.isfile(os.path.expanduser(path)) else shipped_flagfile(path)
        if shipped is None:
            expanded.append(f"{_FLAGFILE}={path}")
        else:
            expanded.extend(expand_shipped_flagfiles(_flagfile_lines(shipped)))
    return expanded


def _flagfile_lines(path: str) -> list[str]:
    """The flags of a flagfile, as absl reads them: one per line, comments
    (# or //) and blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line in lines if line and not line.startswith(("#", "//"))]


def fail(program: str, message: str, status: int) -> None:
    """Prints `program: error: message` to stderr and exits with `status`."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(status)


def _asks_for_help(argv: list[str]) -> bool:
    """Whether `argv` holds one of absl's help flags (--help, -?, --helpfull, ...)."""
    return any(arg.startswith("-") and arg.lstrip("-").split("=")[0] in _HELP_FLAGS
               for arg in argv[1:])


def run(main: Callable[[], object], program: str) -> None:
    """Parses the flags and runs `main()`; the process exits 0, or with the status
    of the `DimError` it raised (dim_tf.errors), its message on stderr.

    A flag that does not parse (misspelled, wrong type) or a stray argument is
    bad input: status 2. Other exceptions are bugs and keep their traceback.
    """
    def parse(argv: list[str]) -> list[str]:
        try:
            return FLAGS(expand_shipped_flagfiles(argv))
        except flags.Error as error:
            fail(program, f"{error} (--help lists the flags)", errors.EXIT_BAD_INPUT)
        except SystemExit as stop:  # absl's help flags print the usage, then exit 1
            if stop.code == 1 and _asks_for_help(argv):
                sys.exit(0)
            raise

    def checked_main(argv: list[str]) -> None:
        if len(argv) > 1:
            fail(program, f"unexpected arguments {argv[1:]}; flags look like --name=value.",
                 errors.EXIT_BAD_INPUT)
        try:
            main()
        except errors.DimError as error:
            fail(program, str(error), error.exit_status)

    app.run(checked_main, flags_parser=parse)
