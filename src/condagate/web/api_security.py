"""REST API: users, groups, grants, API keys and their access logs."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from condagate.errors import AuthenticationRequired
from condagate.security.permissions import Permission, Principal, Scope
from condagate.services import security_admin
from condagate.services.context import Services
from condagate.web.auth import requires

router = APIRouter(prefix="/api", tags=["security"])
ADMIN = [Depends(requires(Permission.ADMIN))]
# Keys: any caller who may view something reaches the route; the service decides what it may do.
SIGNED_IN = Depends(requires(Permission.VIEW, Scope.ANY))


class UserCreate(BaseModel):
    name: str = Field(max_length=200, description="User name; an e-mail address works")
    password: str | None = Field(default=None, max_length=1024, description="Omit for a user who only uses keys")


class PasswordChange(BaseModel):
    password: str = Field(max_length=1024)


class GroupCreate(BaseModel):
    name: str = Field(max_length=100, description="Group name, e.g. Lead Developers")


class GrantChange(BaseModel):
    principal: str = Field(max_length=220, description="user:NAME, group:NAME or anonymous")
    permission: str = Field(max_length=32, description="view, add, promote, delete, manage-feed or admin")
    feed: str | None = Field(default=None, max_length=100, description="A feed, or null for system-wide")


class ApiKeyCreate(BaseModel):
    user: str | None = Field(default=None, max_length=200, description="Acts as this user (a personal key)")
    feeds: list[str] = Field(default=[], max_length=200, description="Limit the key to these feeds")
    permissions: list[str] = Field(default=[], max_length=10, description="Limit the key to these permissions")
    key: str | None = Field(default=None, max_length=200, description="Type the key in instead of generating it")
    expires_at: datetime | None = Field(default=None, description="When the key stops working (ISO 8601)")
    description: str = Field(default="", max_length=500)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _signed_in(principal: Principal) -> Principal:
    if not principal.authenticated:
        raise AuthenticationRequired("API keys belong to users and keys: send credentials")
    return principal


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def key_json(info: security_admin.KeyInfo) -> dict[str, Any]:
    shown = {
        "id": info.id,
        "description": info.description,
        "kind": info.kind,
        "user": info.user,
        "feeds": info.feeds,
        "permissions": info.permissions,
        "hint": info.hint + "…",
        "status": info.status,
        "created_at": _when(info.created_at),
        "created_by": info.created_by,
        "expires_at": _when(info.expires_at),
        "last_used_at": _when(info.last_used_at),
        "revoked_at": _when(info.revoked_at),
    }
    if info.key is not None:
        shown["key"] = info.key  # shown once, in the answer that created it
    return shown


def _grant_json(info: security_admin.GrantInfo) -> dict[str, Any]:
    return {**asdict(info), "created_at": info.created_at.isoformat()}


@router.get("/me", dependencies=[Depends(requires(Permission.PUBLIC))], summary="Who the credentials are")
async def me(request: Request) -> dict[str, Any]:
    principal: Principal = request.state.principal
    return {
        "name": principal.name,
        "authenticated": principal.authenticated,
        "user": principal.user,
        "key_id": principal.key_id,
        "system_permissions": sorted(p.value for p in principal.system),
        "feed_permissions": {feed: sorted(p.value for p in granted) for feed, granted in principal.feeds.items()},
    }


# Users and groups --------------------------------------------------------------------------------


@router.get("/users", dependencies=ADMIN, summary="List users")
async def list_users(request: Request) -> list[dict[str, Any]]:
    users = await run_in_threadpool(security_admin.list_users, _services(request))
    return [{**asdict(u), "created_at": u.created_at.isoformat()} for u in users]


@router.post("/users", status_code=201, dependencies=ADMIN, summary="Create a user")
async def create_user(request: Request, body: UserCreate) -> dict[str, Any]:
    user = await run_in_threadpool(
        lambda: security_admin.create_user(_services(request), name=body.name, password=body.password)
    )
    return {**asdict(user), "created_at": user.created_at.isoformat()}


@router.delete("/users/{user}", status_code=204, dependencies=ADMIN, summary="Delete a user, its keys and grants")
async def delete_user(request: Request, user: str) -> Response:
    await run_in_threadpool(lambda: security_admin.delete_user(_services(request), name=user))
    return Response(status_code=204)


@router.put("/users/{user}/password", status_code=204, dependencies=ADMIN, summary="Set a user's password")
async def set_password(request: Request, user: str, body: PasswordChange) -> Response:
    await run_in_threadpool(lambda: security_admin.set_password(_services(request), name=user, password=body.password))
    return Response(status_code=204)


@router.get("/groups", dependencies=ADMIN, summary="List groups and their members")
async def list_groups(request: Request) -> list[dict[str, Any]]:
    return [asdict(g) for g in await run_in_threadpool(security_admin.list_groups, _services(request))]


@router.post("/groups", status_code=201, dependencies=ADMIN, summary="Create a group")
async def create_group(request: Request, body: GroupCreate) -> dict[str, Any]:
    return asdict(await run_in_threadpool(lambda: security_admin.create_group(_services(request), name=body.name)))


@router.delete("/groups/{group}", status_code=204, dependencies=ADMIN, summary="Delete a group and its grants")
async def delete_group(request: Request, group: str) -> Response:
    await run_in_threadpool(lambda: security_admin.delete_group(_services(request), name=group))
    return Response(status_code=204)


@router.put("/groups/{group}/members/{user}", status_code=204, dependencies=ADMIN, summary="Add a user to a group")
async def add_member(request: Request, group: str, user: str) -> Response:
    await run_in_threadpool(
        lambda: security_admin.set_membership(_services(request), group=group, user=user, member=True)
    )
    return Response(status_code=204)


@router.delete(
    "/groups/{group}/members/{user}", status_code=204, dependencies=ADMIN, summary="Remove a user from a group"
)
async def remove_member(request: Request, group: str, user: str) -> Response:
    await run_in_threadpool(
        lambda: security_admin.set_membership(_services(request), group=group, user=user, member=False)
    )
    return Response(status_code=204)


# Grants ------------------------------------------------------------------------------------------


@router.get("/grants", dependencies=ADMIN, summary="The grants overview: who may do what, where")
async def list_grants(request: Request, feed: str | None = Query(default=None, max_length=100)) -> list[dict[str, Any]]:
    grants = await run_in_threadpool(lambda: security_admin.list_grants(_services(request), feed=feed))
    return [_grant_json(g) for g in grants]


@router.post("/grants", status_code=201, dependencies=ADMIN, summary="Grant a permission (granting twice is a no-op)")
async def add_grant(request: Request, body: GrantChange, response: Response) -> dict[str, Any]:
    principal: Principal = request.state.principal
    info, created = await run_in_threadpool(
        lambda: security_admin.add_grant(
            _services(request), principal=body.principal, permission=body.permission, feed=body.feed, by=principal.name
        )
    )
    if not created:
        response.status_code = 200
    return _grant_json(info)


@router.delete("/grants", status_code=204, dependencies=ADMIN, summary="Remove a grant")
async def remove_grant(
    request: Request,
    principal: str = Query(max_length=220),
    permission: str = Query(max_length=32),
    feed: str | None = Query(default=None, max_length=100),
) -> Response:
    await run_in_threadpool(
        lambda: security_admin.remove_grant(_services(request), principal=principal, permission=permission, feed=feed)
    )
    return Response(status_code=204)


@router.delete("/grants/{grant_id}", status_code=204, dependencies=ADMIN, summary="Remove a grant by its id")
async def remove_grant_by_id(request: Request, grant_id: int) -> Response:
    await run_in_threadpool(lambda: security_admin.remove_grant_by_id(_services(request), grant_id=grant_id))
    return Response(status_code=204)


# API keys ----------------------------------------------------------------------------------------


@router.get("/apikeys", summary="List API keys (all for an administrator, your own otherwise)")
async def list_keys(request: Request, principal: Principal = SIGNED_IN) -> list[dict[str, Any]]:
    _signed_in(principal)
    return [key_json(k) for k in await run_in_threadpool(security_admin.list_keys, _services(request), principal)]


@router.post("/apikeys", status_code=201, summary="Create an API key (the key is shown in this answer only)")
async def create_key(request: Request, body: ApiKeyCreate, principal: Principal = SIGNED_IN) -> dict[str, Any]:
    _signed_in(principal)
    info = await run_in_threadpool(
        lambda: security_admin.create_key(
            _services(request),
            principal,
            user=body.user,
            feeds=body.feeds,
            permissions=body.permissions,
            key=body.key,
            expires_at=body.expires_at,
            description=body.description,
        )
    )
    return key_json(info)


@router.delete("/apikeys/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_key(request: Request, key_id: int, principal: Principal = SIGNED_IN) -> Response:
    _signed_in(principal)
    await run_in_threadpool(lambda: security_admin.revoke_key(_services(request), principal, key_id=key_id))
    return Response(status_code=204)


@router.get("/apikeys/{key_id}/access-log", summary="A key's access log: time, address, method, path, status")
async def key_access_log(
    request: Request, key_id: int, limit: int = Query(default=200, ge=1, le=5000), principal: Principal = SIGNED_IN
) -> list[dict[str, Any]]:
    _signed_in(principal)
    entries = await run_in_threadpool(
        lambda: security_admin.key_access_log(_services(request), principal, key_id=key_id, limit=limit)
    )
    return [_entry_json(e) for e in entries]


@router.get("/access-log", dependencies=ADMIN, summary="Recent requests made with credentials")
async def access_log(request: Request, limit: int = Query(default=200, ge=1, le=5000)) -> list[dict[str, Any]]:
    entries = await run_in_threadpool(lambda: security_admin.access_log(_services(request), limit=limit))
    return [_entry_json(e) for e in entries]


def _entry_json(entry: Any) -> dict[str, Any]:
    return {
        "at": entry.at.isoformat(),
        "api_key_id": entry.api_key_id,
        "principal": entry.principal,
        "client": entry.client,
        "method": entry.method,
        "path": entry.path,
        "status": entry.status,
        "count": entry.request_count,  # identical requests written together (between first_at and at)
        "first_at": (entry.first_at or entry.at).isoformat(),
    }
