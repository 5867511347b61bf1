"""CLI objects of the API v1 core: flavors, keypairs, server groups, projects, users, roles, quotas,
hosts, tokens and the service catalog."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from hvd.catalog.quota import DEFAULT_LIMITS
from hvd.cli.commands import Action, Opt, Registry, Resource
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_list, print_one

ENABLE = (Opt("--enable", "enabled", "enable it", kind="const", const=True),
          Opt("--disable", "enabled", "disable it", kind="const", const=False))

FLAVOR = Resource(
    "flavor", "/v1/flavors", "flavors", ("id", "name", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb", "is_public"),
    ref="flavor id or name",
    create=(
        Opt("name", "name", "flavor name"),
        Opt("--vcpus", "vcpus", "virtual CPUs", type=int, required=True),
        Opt("--ram", "ram_mb", "memory in MiB", type=int, required=True),
        Opt("--disk", "disk_gb", "root disk in GiB", type=int),
        Opt("--ephemeral", "ephemeral_gb", "ephemeral disk in GiB", type=int),
        Opt("--swap", "swap_mb", "swap in MiB", type=int),
        Opt("--id", "id", "flavor id (default: a UUID)"),
        Opt("--description", "description", "description"),
        Opt("--public", "is_public", "usable by every project (default)", kind="const", const=True),
        Opt("--private", "is_public", "usable only by projects given access", kind="const", const=False),
        Opt("--property", "extra_specs", "extra spec (repeat)", kind="pairs"),
    ),
)

KEYPAIR = Resource(
    "keypair", "/v1/keypairs", "keypairs", ("name", "fingerprint", "type"), ref="keypair name",
    create=(
        Opt("name", "name", "keypair name"),
        Opt("--public-key", "public_key", "import this OpenSSH public key file (default: generate a key)",
            kind="file", metavar="FILE"),
    ),
)

SERVER_GROUP = Resource(
    "server-group", "/v1/server-groups", "server_groups", ("id", "name", "policy", "members"),
    ref="server group id or name",
    create=(
        Opt("name", "name", "server group name"),
        Opt("--policy", "policy", "placement policy", required=True,
            choices=("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")),
    ),
)

PROJECT = Resource(
    "project", "/v1/projects", "projects", ("id", "name", "enabled", "description"), ref="project id or name",
    create=(Opt("name", "name", "project name"), Opt("--description", "description", "description"), *ENABLE),
    update=(Opt("--name", "name", "new name"), Opt("--description", "description", "description"), *ENABLE),
)

USER = Resource(
    "user", "/v1/users", "users", ("id", "name", "email", "enabled"), ref="user id or name",
    create=(
        Opt("name", "name", "user name"),
        Opt("--password", "password", "password (8 characters or more)", required=True),
        Opt("--email", "email", "e-mail address"),
        Opt("--project", "project", "grant --role on this project"),
        Opt("--role", "role", "role on --project (default: member)", choices=("admin", "member", "reader")),
        *ENABLE,
    ),
    update=(Opt("--password", "password", "new password"), Opt("--email", "email", "e-mail address"), *ENABLE),
)

HOST = Resource(
    "host", "/v1/hosts", "hosts",
    ("name", "availability_zone", "enabled", "disabled_reason", "state", "incarnation", "report_age_s",
     "hypervisor_type", "instances"),
    ref="host name", deletable=False,
)


def flavor_set(session: Session, args: argparse.Namespace) -> None:
    flavor = FLAVOR.url(args.flavor)
    if not (args.opt_property or args.opt_unset_property or args.opt_project or args.opt_remove_project):
        raise CliError("nothing to change: give --property, --unset-property, --project or --remove-project")
    if args.opt_property or args.opt_unset_property:
        session.call("POST", flavor + "/extra-specs",
                     {"set": dict(args.opt_property), "unset": list(args.opt_unset_property)})
    for project in args.opt_project:
        session.call("POST", flavor + "/access", {"project": project})
    for project in args.opt_remove_project:
        session.call("POST", flavor + "/access/remove", {"project": project})


FLAVOR_SET = Action("set", "set extra specs or project access of a flavor", flavor_set, (
    Opt("flavor", "", "flavor id or name"),
    Opt("--property", "", "set an extra spec (repeat)", kind="pairs"),
    Opt("--unset-property", "", "remove an extra spec (repeat)", kind="list", metavar="KEY"),
    Opt("--project", "", "give a project access to this private flavor (repeat)", kind="list"),
    Opt("--remove-project", "", "remove a project's access (repeat)", kind="list"),
), output=False, operations=("POST /v1/flavors/{id}/extra-specs", "POST /v1/flavors/{id}/access",
                             "POST /v1/flavors/{id}/access/remove"))


def flavor_access(session: Session, args: argparse.Namespace) -> None:
    got = session.call("GET", FLAVOR.url(args.flavor) + "/access")
    print_list([{"project_id": project} for project in got["projects"]], ("project_id",), args)


FLAVOR_ACCESS = Action("access-list", "list the projects with access to a private flavor", flavor_access,
                       (Opt("flavor", "", "flavor id or name"),), operations=("GET /v1/flavors/{id}/access",))

ROLE_TARGET = (Opt("role", "", "role", choices=("admin", "member", "reader")),
               Opt("--user", "", "user id or name", required=True),
               Opt("--project", "", "project id or name", required=True))


def _assignment(args: argparse.Namespace) -> str:
    return f"/v1/projects/{quote(args.opt_project, safe='')}/users/{quote(args.opt_user, safe='')}/roles"


def role_add(session: Session, args: argparse.Namespace) -> None:
    session.call("PUT", f"{_assignment(args)}/{args.role}")


def role_remove(session: Session, args: argparse.Namespace) -> None:
    session.call("DELETE", f"{_assignment(args)}/{args.role}")


def role_list(session: Session, args: argparse.Namespace) -> None:
    if (args.opt_user is None) != (args.opt_project is None):
        raise CliError("give both --user and --project to list a user's roles on a project")
    if args.opt_user is None:
        print_list(session.call("GET", "/v1/roles")["roles"], ("name", "description"), args)
        return
    got = session.call("GET", _assignment(args))
    print_list([{"role": r, "user": got["user_id"], "project": got["project_id"]} for r in got["roles"]],
               ("role", "user", "project"), args)


def _current_project(session: Session) -> str:
    return str(session.call("GET", "/v1/auth/token")["project"]["id"])


def quota_show(session: Session, args: argparse.Namespace) -> None:
    project = args.project or _current_project(session)
    got = session.call("GET", f"/v1/quotas/{quote(project, safe='')}")
    rows = [{"resource": res, **values} for res, values in got["quotas"].items()]
    print_list(rows, ("resource", "limit", "in_use"), args)


QUOTA_OPTS = tuple(Opt("--" + res.replace("_", "-"), res, f"limit of {res} (-1 = unlimited)", type=int)
                   for res in DEFAULT_LIMITS)


def quota_set(session: Session, args: argparse.Namespace) -> None:
    limits = {opt.field: opt.value(args) for opt in QUOTA_OPTS if opt.value(args) is not None}
    if not limits:
        raise CliError("nothing to change: give at least one --<resource> N")
    session.call("PUT", f"/v1/quotas/{quote(args.project, safe='')}", {"quotas": limits})


def _host_enabled(enabled: bool) -> Any:
    def run(session: Session, args: argparse.Namespace) -> None:
        body: dict[str, Any] = {"enabled": enabled}
        if not enabled and args.opt_reason:
            body["reason"] = args.opt_reason
        print_one(session.call("PATCH", HOST.url(args.host), body), args)

    return run


def _host_post(action: str) -> Any:
    def run(session: Session, args: argparse.Namespace) -> None:
        print_one(session.call("POST", HOST.url(args.host) + "/" + action, {}), args)

    return run


def token_issue(session: Session, args: argparse.Namespace) -> None:
    if session.token is not None and not session.username:
        got = session.call("GET", "/v1/auth/token")
        got["token"] = session.token
    else:
        got = session.login()
    print_one({"token": got["token"], "expires_at": got["expires_at"], "user": got["user"]["name"],
               "user_id": got["user"]["id"], "project": got["project"]["name"],
               "project_id": got["project"]["id"], "roles": got["roles"]}, args)


def token_show(session: Session, args: argparse.Namespace) -> None:
    got = session.call("GET", "/v1/auth/token")
    print_one({"expires_at": got["expires_at"], "user": got["user"]["name"], "user_id": got["user"]["id"],
               "project": got["project"]["name"], "project_id": got["project"]["id"], "roles": got["roles"]}, args)


def token_revoke(session: Session, args: argparse.Namespace) -> None:
    if args.token:
        session.token = args.token
    session.call("DELETE", "/v1/auth/token")


def catalog_list(session: Session, args: argparse.Namespace) -> None:
    rows = [{"type": s["type"], "name": s["name"],
             "endpoints": ", ".join(f"{e['interface']}: {e['url']}" for e in s["endpoints"])}
            for s in session.call("GET", "/v1/catalog")["catalog"]]
    print_list(rows, ("type", "name", "endpoints"), args)


def register_core(registry: Registry) -> None:
    registry.register_resource(FLAVOR, "flavors (sizes of servers)")
    registry.register_action("flavor", FLAVOR_SET)
    registry.register_action("flavor", FLAVOR_ACCESS)
    registry.register_resource(KEYPAIR, "SSH keypairs (yours)")
    registry.register_resource(SERVER_GROUP, "server groups (affinity policies)")
    registry.register_resource(PROJECT, "projects")
    registry.register_resource(USER, "users")
    assignment = "/v1/projects/{project}/users/{user}/roles"
    registry.register_action("role", Action("add", "grant a role", role_add, ROLE_TARGET, output=False,
                                            operations=(f"PUT {assignment}/{{role}}",)), "role assignments")
    registry.register_action("role", Action("remove", "revoke a role", role_remove, ROLE_TARGET, output=False,
                                            operations=(f"DELETE {assignment}/{{role}}",)))
    registry.register_action("role", Action("list", "list roles, or a user's roles on a project", role_list, (
        Opt("--user", "", "user id or name"), Opt("--project", "", "project id or name")),
        operations=("GET /v1/roles", f"GET {assignment}")))
    registry.register_action("quota", Action("show", "show a project's quotas and usage", quota_show, (),
                                             configure=lambda p: p.add_argument(
                                                 "project", nargs="?", help="project (default: yours)"),
                                             operations=("GET /v1/quotas/{project}", "GET /v1/auth/token")),
                             "project quotas")
    registry.register_action("quota", Action("set", "set a project's quotas", quota_set,
                                             (Opt("project", "", "project id or name"), *QUOTA_OPTS), output=False,
                                             operations=("PUT /v1/quotas/{project}",)))
    registry.register_resource(HOST, "hypervisor hosts")
    host_patch = ("PATCH /v1/hosts/{name}",)
    registry.register_action("host", Action("enable", "enable a host for scheduling", _host_enabled(True),
                                            (Opt("host", "", "host name"),), operations=host_patch))
    registry.register_action("host", Action("disable", "stop scheduling to a host", _host_enabled(False),
                                            (Opt("host", "", "host name"),
                                             Opt("--reason", "", "why (shown in host show)")), operations=host_patch))
    registry.register_action("host", Action("drain", "disable a host and move every server away (blocks until done)",
                                            _host_post("drain"), (Opt("host", "", "host name"),),
                                            operations=("POST /v1/hosts/{name}/drain",)))
    registry.register_action("token", Action("issue", "issue a token from the HVD_* credentials", token_issue,
                                             operations=("POST /v1/auth/tokens", "GET /v1/auth/token")), "tokens")
    registry.register_action("token", Action("show", "show the token in use (HVD_TOKEN, or a new one)", token_show,
                                             operations=("GET /v1/auth/token",)))
    registry.register_action("token", Action("revoke", "revoke a token (default: HVD_TOKEN)", token_revoke,
                                             output=False, configure=lambda p: p.add_argument(
                                                 "token", nargs="?", help="token to revoke"),
                                             operations=("DELETE /v1/auth/token",)))
    registry.register_action("catalog", Action("list", "list the service catalog", catalog_list,
                                               operations=("GET /v1/catalog",)), "service catalog")
