"""Command lines from settings dataclasses, the one way train.py, curate.py and decontaminate.py
build theirs: `setting` declares a field with its default and help text, `command_options` turns
every field of a dataclass into a click option (`global_batch` -> --global-batch).

    python train.py --help      # one option per TrainConfig field, each with its help text
"""
import dataclasses

import click


def setting(default, help_text):
    """A dataclass field with the help text of its command-line option (a list default is copied
    for each instance, as dataclasses require)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help_text})
    return dataclasses.field(default=default, metadata={"help": help_text})


def command_options(cls, required=()):
    """Decorator: one click option per field of the dataclass `cls`, typed by its annotation
    (bool: a flag; a list default: a repeatable string option; `float | None`: a float that may
    stay unset), with the field's default and its setting() help. Fields named in `required`
    must be given."""
    def add(command):
        for f in reversed(dataclasses.fields(cls)):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            flag, text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
            if f.type is bool:
                command = click.option(flag, f.name, is_flag=True, default=default, help=text)(command)
                continue
            many = isinstance(default, list)
            kind = str if many else next(t for t in (int, float, str)
                                         if t is f.type or t in getattr(f.type, "__args__", ()))
            # a required option gets no default: click reports only a value that is missing
            given = {"required": True} if f.name in required else {"default": default, "show_default": True}
            command = click.option(flag, f.name, type=kind, multiple=many, help=text, **given)(command)
        return command
    return add
