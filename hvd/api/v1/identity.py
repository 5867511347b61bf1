"""/v1/projects, /v1/users, /v1/roles and role assignments."""

from __future__ import annotations

import uuid
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hvd.api.helpers import context, json_response, page_params, paginate, parse_body
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog import queries
from hvd.catalog.cmd_identity import (
    ProjectCreate,
    ProjectDelete,
    ProjectUpdate,
    RoleGrant,
    RoleRevoke,
    UserCreate,
    UserDelete,
    UserUpdate,
)
from hvd.catalog.sql import fetch_all
from hvd.errors import BadRequest, NotFound
from hvd.identity.service import now_iso

Name = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    description: str = Field("", max_length=1024)
    enabled: bool = True


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    description: str | None = Field(None, max_length=1024)
    enabled: bool | None = None


class Project(BaseModel):
    id: str
    name: str
    description: str
    enabled: bool
    created_at: str


class ProjectList(BaseModel):
    projects: list[Project]
    next: str | None


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    password: str = Field(min_length=8, max_length=4096)
    email: str = Field("", max_length=255)
    enabled: bool = True
    project: str | None = Field(None, description="Project (name or id) to grant `role` on.")
    role: Literal["admin", "member", "reader"] = "member"


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(None, min_length=8, max_length=4096)
    original_password: str | None = Field(None, min_length=1, max_length=4096,
                                          description="The current password (needed to change your own).")
    email: str | None = Field(None, max_length=255)
    enabled: bool | None = None


class User(BaseModel):
    id: str
    name: str
    email: str
    enabled: bool
    created_at: str


class UserList(BaseModel):
    users: list[User]
    next: str | None


class RoleInfo(BaseModel):
    name: str
    description: str


class RoleList(BaseModel):
    roles: list[RoleInfo]


class Assignment(BaseModel):
    user_id: str
    project_id: str
    roles: list[str]


ROLES = {
    "admin": "Everything, in every project (the seed's 'root').",
    "member": "Create and manage the project's resources.",
    "reader": "Read the project's resources.",
}


def _project_out(row: dict[str, object]) -> dict[str, object]:
    return {k: row[k] for k in ("id", "name", "description", "enabled", "created_at")}


def _user_out(row: dict[str, object]) -> dict[str, object]:
    return {k: row[k] for k in ("id", "name", "email", "enabled", "created_at")}


async def list_projects(request: web.Request) -> web.Response:
    ctx = context(request)
    cat = services(request).catalog
    if services(request).policy.allowed(ctx.roles, "identity:manage"):
        rows = await cat.read(fetch_all, "SELECT * FROM projects ORDER BY created_at, id")
    else:
        rows = await cat.read(queries.user_projects, ctx.user_id)
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"projects": [_project_out(r) for r in page], "next": nxt})


async def _visible_project(request: web.Request) -> dict[str, object]:
    ctx = context(request)
    row = await services(request).catalog.read(queries.find, "projects", request.match_info["id"], "Project")
    if not services(request).policy.allowed(ctx.roles, "identity:manage") and row["id"] != ctx.project_id:
        raise NotFound(f"Project {request.match_info['id']} could not be found")
    return row


async def show_project(request: web.Request) -> web.Response:
    return json_response(_project_out(await _visible_project(request)))


async def create_project(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    body = await parse_body(request, ProjectIn)
    pid = str(uuid.uuid4())
    await svc.catalog.propose(
        ProjectCreate(id=pid, name=body.name, description=body.description, enabled=body.enabled, created_at=now_iso())
    )
    row = await svc.catalog.read(queries.find, "projects", pid, "Project")
    return json_response(_project_out(row), status=201, location=f"/v1/projects/{pid}")


async def update_project(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    body = await parse_body(request, ProjectPatch)
    row = await svc.catalog.read(queries.find, "projects", request.match_info["id"], "Project")
    await svc.catalog.propose(ProjectUpdate(id=str(row["id"]), **body.model_dump()))
    return json_response(_project_out(await svc.catalog.read(queries.find, "projects", str(row["id"]), "Project")))


async def delete_project(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    row = await svc.catalog.read(queries.find, "projects", request.match_info["id"], "Project")
    await svc.catalog.propose(ProjectDelete(id=str(row["id"])))
    return web.Response(status=204)


async def list_users(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    rows = await svc.catalog.read(fetch_all, "SELECT * FROM users ORDER BY created_at, id")
    page, nxt = paginate(rows, *page_params(request))
    return json_response({"users": [_user_out(r) for r in page], "next": nxt})


async def _visible_user(request: web.Request) -> dict[str, object]:
    ctx = context(request)
    row = await services(request).catalog.read(queries.find, "users", request.match_info["id"], "User")
    if not services(request).policy.allowed(ctx.roles, "identity:manage") and row["id"] != ctx.user_id:
        raise NotFound(f"User {request.match_info['id']} could not be found")
    return row


async def show_user(request: web.Request) -> web.Response:
    return json_response(_user_out(await _visible_user(request)))


async def create_user(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    body = await parse_body(request, UserIn)
    project = None
    if body.project is not None:
        project = await svc.catalog.read(queries.find, "projects", body.project, "Project")
    uid = str(uuid.uuid4())
    pw_hash = await svc.identity.hash(body.password)
    await svc.catalog.propose(
        UserCreate(id=uid, name=body.name, password_hash=pw_hash, email=body.email, enabled=body.enabled,
                   created_at=now_iso())
    )
    if project is not None:
        await svc.catalog.propose(RoleGrant(user_id=uid, project_id=str(project["id"]), role=body.role))
    row = await svc.catalog.read(queries.find, "users", uid, "User")
    return json_response(_user_out(row), status=201, location=f"/v1/users/{uid}")


async def update_user(request: web.Request) -> web.Response:
    svc = services(request)
    ctx = context(request)
    row = await _visible_user(request)
    body = await parse_body(request, UserPatch)
    manager = svc.policy.allowed(ctx.roles, "identity:manage")
    if not manager and (body.enabled is not None or body.email is not None):
        # users may change their own password, nothing else
        svc.policy.enforce(ctx.roles, "identity:manage")
    pw_hash = None
    if body.password is not None:
        if not manager:  # a stolen token alone must not take the account over
            if body.original_password is None:
                raise BadRequest("changing your own password needs 'original_password'")
            await svc.identity.check_password(str(row["id"]), body.original_password, request.remote or "")
        pw_hash = await svc.identity.hash(body.password)
    await svc.catalog.propose(
        UserUpdate(id=str(row["id"]), password_hash=pw_hash, email=body.email, enabled=body.enabled)
    )
    return json_response(_user_out(await svc.catalog.read(queries.find, "users", str(row["id"]), "User")))


async def delete_user(request: web.Request) -> web.Response:
    svc = services(request)
    ctx = context(request)
    svc.policy.enforce(ctx.roles, "identity:manage")
    row = await svc.catalog.read(queries.find, "users", request.match_info["id"], "User")
    if row["id"] == ctx.user_id:
        raise BadRequest("you cannot delete the user you are authenticated as")
    await svc.catalog.propose(UserDelete(id=str(row["id"])))
    return web.Response(status=204)


async def list_roles(request: web.Request) -> web.Response:
    context(request)
    return json_response({"roles": [{"name": n, "description": d} for n, d in ROLES.items()]})


async def _assignment_refs(request: web.Request) -> tuple[str, str]:
    cat = services(request).catalog
    project = await cat.read(queries.find, "projects", request.match_info["project"], "Project")
    user = await cat.read(queries.find, "users", request.match_info["user"], "User")
    return str(user["id"]), str(project["id"])


def _role(request: web.Request) -> Literal["admin", "member", "reader"]:
    role = request.match_info["role"]
    if role not in ROLES:
        raise NotFound(f"Role {role} could not be found")
    return role  # type: ignore[return-value]


async def show_assignment(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    user_id, project_id = await _assignment_refs(request)
    roles = await svc.catalog.read(queries.roles_of, user_id, project_id)
    return json_response({"user_id": user_id, "project_id": project_id, "roles": roles})


async def grant_role(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    role = _role(request)
    user_id, project_id = await _assignment_refs(request)
    await svc.catalog.propose(RoleGrant(user_id=user_id, project_id=project_id, role=role))
    roles = await svc.catalog.read(queries.roles_of, user_id, project_id)
    return json_response({"user_id": user_id, "project_id": project_id, "roles": roles})


async def revoke_role(request: web.Request) -> web.Response:
    svc = services(request)
    svc.policy.enforce(context(request).roles, "identity:manage")
    role = _role(request)
    user_id, project_id = await _assignment_refs(request)
    await svc.catalog.propose(RoleRevoke(user_id=user_id, project_id=project_id, role=role))
    return web.Response(status=204)


def register(router: Router) -> None:
    t = "identity"
    page = (("limit", "integer", "page size"), ("marker", "string", "last id of the previous page"))
    router.add("GET", "/v1/projects", list_projects, "List projects", response=ProjectList, query=page, tag=t)
    router.add("POST", "/v1/projects", create_project, "Create a project", body=ProjectIn, response=Project,
               status=201, tag=t)
    router.add("GET", "/v1/projects/{id}", show_project, "Show a project", response=Project, tag=t)
    router.add("PATCH", "/v1/projects/{id}", update_project, "Update a project", body=ProjectPatch,
               response=Project, tag=t)
    router.add("DELETE", "/v1/projects/{id}", delete_project, "Delete a project", status=204, tag=t)
    router.add("GET", "/v1/users", list_users, "List users", response=UserList, query=page, tag=t)
    router.add("POST", "/v1/users", create_user, "Create a user", body=UserIn, response=User, status=201, tag=t)
    router.add("GET", "/v1/users/{id}", show_user, "Show a user", response=User, tag=t)
    router.add("PATCH", "/v1/users/{id}", update_user, "Update a user", body=UserPatch, response=User, tag=t)
    router.add("DELETE", "/v1/users/{id}", delete_user, "Delete a user", status=204, tag=t)
    router.add("GET", "/v1/roles", list_roles, "List roles", response=RoleList, tag=t)
    base = "/v1/projects/{project}/users/{user}/roles"
    router.add("GET", base, show_assignment, "List a user's roles on a project", response=Assignment, tag=t)
    router.add("PUT", base + "/{role}", grant_role, "Grant a role", response=Assignment, tag=t)
    router.add("DELETE", base + "/{role}", revoke_role, "Revoke a role", status=204, tag=t)
