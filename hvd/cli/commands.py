"""Table-driven `hvd <object> <action>` commands.

A `Resource` describes a REST collection (path, list columns, create/update options); it yields the
generic `create`, `list`, `show`, `delete` and `set` actions. Anything else is an `Action` with its
own options and run function. Later layers (servers, images, networks) register theirs with
`register_resource` / `register_action` (or `register_command` for a top-level `hvd <name>`), and
`add_client_commands` builds the argparse tree.

Every action names the API operations it calls in `operations` ("POST /v1/routers/{id}/add-interface",
path templates as in /v1/openapi.json; parameter names do not matter): the CLI-completeness test
checks that every operation of the OpenAPI document has a command, and that no command names an
operation the API does not have. Resources fill theirs in from their path.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hvd.cli.http import CliError, Session
from hvd.cli.output import add_output_options, print_list, print_one

OptKind = Literal["value", "const", "pairs", "list", "file"]


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


@dataclass(frozen=True)
class Opt:
    """One command-line argument that becomes a field of the request body.

    kind: value (typed value), const (a flag storing `const`, e.g. --disable -> enabled=False),
    pairs (repeatable KEY=VALUE -> dict), list (repeatable -> list), file (a path whose text is sent).
    A name without a leading dash is positional."""

    flag: str
    field: str
    help: str = ""
    type: Callable[[str], Any] = str
    kind: OptKind = "value"
    const: Any = None
    required: bool = False
    choices: Sequence[str] | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return "opt_" + self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if not self.flag.startswith("-"):
            parser.add_argument(self.flag, metavar=self.metavar or self.flag.upper(), help=self.help,
                                type=self.type, choices=self.choices)
            return
        kw: dict[str, Any] = {"dest": self.dest, "help": self.help}
        if self.kind == "const":
            kw.update(action="store_const", const=self.const)
        elif self.kind in ("pairs", "list"):
            kw.update(action="append", default=[], type=key_value if self.kind == "pairs" else self.type,
                      metavar=self.metavar or ("KEY=VALUE" if self.kind == "pairs" else None))
        else:
            metavar = self.metavar or (None if self.choices else self.flag.lstrip("-").upper().replace("-", "_"))
            kw.update(type=self.type, required=self.required, choices=self.choices, metavar=metavar)
        parser.add_argument(self.flag, **kw)

    def value(self, args: argparse.Namespace) -> Any:
        """The body value given on the command line, or None when the option was not used."""
        raw = getattr(args, self.flag if not self.flag.startswith("-") else self.dest)
        if self.kind == "pairs":
            return dict(raw) if raw else None
        if self.kind == "list":
            return list(raw) if raw else None
        if self.kind == "file" and raw is not None:
            try:
                return Path(raw).read_text()
            except OSError as exc:
                raise CliError(f"cannot read {raw}: {exc.strerror}") from None
        return raw


def body_from(opts: Sequence[Opt], args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for opt in opts:
        value = opt.value(args)
        if value is not None:
            body[opt.field] = value
    return body


Run = Callable[[Session, argparse.Namespace], None]


@dataclass(frozen=True)
class Action:
    """A command: `hvd <object> <name>` with its arguments and what it does."""

    name: str
    help: str
    run: Run
    args: Sequence[Opt] = ()
    output: bool = True  # takes -f/-c
    configure: Callable[[argparse.ArgumentParser], object] | None = None
    operations: Sequence[str] = ()  # "METHOD /v1/path/{id}" of every API operation it calls


@dataclass(frozen=True)
class Resource:
    """A REST collection at `path` whose list answer holds `plural` (e.g. /v1/flavors, flavors)."""

    name: str
    path: str
    plural: str
    columns: Sequence[str]
    ref: str = "id"  # how the positional reference is described (id, name, "id or name")
    create: Sequence[Opt] | None = None
    update: Sequence[Opt] | None = None  # PATCH fields: gives `set`
    list_query: Sequence[Opt] = ()
    deletable: bool = True
    summary: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # a list row made readable (show: all)

    def url(self, ref: str) -> str:
        from urllib.parse import quote

        return f"{self.path}/{quote(ref, safe='')}"

    def actions(self) -> list[Action]:
        singular = self.name.replace("-", " ")
        a = "an" if singular[0] in "aeio" else "a"
        item = f"{self.path}/{{id}}"
        acts = [
            Action("list", f"list {singular}s", self._list, self.list_query, operations=(f"GET {self.path}",)),
            Action("show", f"show {a} {singular}", self._show, (Opt(self.name, "", help=f"{self.ref}"),),
                   operations=(f"GET {item}",)),
        ]
        if self.create is not None:
            acts.insert(0, Action("create", f"create {a} {singular}", self._create, self.create,
                                  operations=(f"POST {self.path}",)))
        if self.deletable:
            acts.append(Action("delete", f"delete {singular}s", self._delete, output=False,
                               configure=lambda p: p.add_argument(self.name, nargs="+", help=self.ref),
                               operations=(f"DELETE {item}",)))
        if self.update is not None:
            acts.append(Action("set", f"change {a} {singular}", self._set,
                               (Opt(self.name, "", help=self.ref), *self.update), output=False,
                               operations=(f"PATCH {item}",)))
        return acts

    def _create(self, session: Session, args: argparse.Namespace) -> None:
        print_one(session.call("POST", self.path, body_from(self.create or (), args)), args)

    def _list(self, session: Session, args: argparse.Namespace) -> None:
        rows = session.list_all(self.path, self.plural, body_from(self.list_query, args))
        print_list([self.summary(r) for r in rows] if self.summary else rows, self.columns, args)

    def _show(self, session: Session, args: argparse.Namespace) -> None:
        print_one(session.call("GET", self.url(getattr(args, self.name))), args)

    def _delete(self, session: Session, args: argparse.Namespace) -> None:
        for ref in getattr(args, self.name):
            session.call("DELETE", self.url(ref))

    def _set(self, session: Session, args: argparse.Namespace) -> None:
        body = body_from(self.update or (), args)
        if not body:
            raise CliError("nothing to change: give at least one option")
        session.call("PATCH", self.url(getattr(args, self.name)), body)


@dataclass
class Registry:
    """Every object of the CLI and its actions, in registration order."""

    objects: dict[str, dict[str, Action]] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    commands: dict[str, Action] = field(default_factory=dict)  # top-level `hvd <name>` (e.g. events)

    def register_resource(self, resource: Resource, help: str = "") -> None:
        for action in resource.actions():
            self.register_action(resource.name, action, help)

    def register_action(self, obj: str, action: Action, help: str = "") -> None:
        self.objects.setdefault(obj, {})[action.name] = action
        if help or obj not in self.helps:
            self.helps[obj] = help or f"{obj} commands"

    def register_command(self, action: Action) -> None:
        """A top-level command, `hvd <action.name>` (no object)."""
        self.commands[action.name] = action

    def operations(self) -> dict[str, list[str]]:
        """API operation ("METHOD /path") -> the commands that call it ("hvd router add-interface")."""
        found: dict[str, list[str]] = {}
        named = [(f"hvd {obj} {a.name}", a) for obj, acts in self.objects.items() for a in acts.values()]
        for command, action in [*named, *((f"hvd {a.name}", a) for a in self.commands.values())]:
            for op in action.operations:
                found.setdefault(op, []).append(command)
        return found

    def install(self, subparsers: Any, session_factory: Callable[[], Session] = Session.from_env) -> None:
        for obj, actions in self.objects.items():
            obj_parser = subparsers.add_parser(obj, help=self.helps[obj])
            obj_sub = obj_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
            for action in actions.values():
                _add_action(obj_sub, action, session_factory)
        for action in self.commands.values():
            _add_action(subparsers, action, session_factory)


def _add_action(subparsers: Any, action: Action, session_factory: Callable[[], Session]) -> None:
    p = subparsers.add_parser(action.name, help=action.help, description=action.help)
    for opt in action.args:
        opt.add_to(p)
    if action.configure is not None:
        action.configure(p)
    if action.output:
        add_output_options(p)
    p.set_defaults(func=_runner(action.run, session_factory))


def _runner(run: Run, session_factory: Callable[[], Session]) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        run(session_factory(), args)
        return 0

    return func
