"""The base of a deleted image a server runs on: when it comes from another host's image cache,
which hosts are asked, which host gives it out, and the serving side's file checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from hvd.compute.base_source import cache_holders, from_peer_caches, serves_base, valid_image_id
from hvd.errors import NotFound
from hvd.storage import transfer
from hvd.storage.image_cache import ImageCache

IMG = "917d60ef-f663-4e2d-b85b-e4511bb56bc2"
OTHER = "0f4b8d1e-58c2-4a41-9c7e-2b6a3f1d9e10"


def inst(host: str | None, image_id: str = IMG, **extra: Any) -> dict[str, Any]:
    return {"id": "i-" + str(host), "host": host, "image_id": image_id, "extra": extra}


def image(status: str, image_id: str = IMG) -> dict[str, Any]:
    return {"id": image_id, "status": status}


@pytest.mark.parametrize(("img", "server", "expected"), [
    (image("deleted"), inst("node1"), True),  # the server's own image was deleted (or unshelve deleted it)
    (image("active"), inst("node1"), False),  # still in the stores: the usual path
    (image("queued"), inst("node1"), False),  # never had data: no cache holds it
    (image("killed"), inst("node1"), False),
    (image("deleted", OTHER), inst("node1"), False),  # rebuild/rescue with a deleted image: no disk overlays it
    (image("deleted"), None, False),  # no server asks
])
def test_a_base_comes_from_peer_caches_only_for_the_deleted_image_a_server_runs_on(
        img: dict[str, Any], server: dict[str, Any] | None, expected: bool) -> None:
    assert from_peer_caches(img, server) is expected


def test_the_servers_host_is_asked_first_then_the_kept_source_then_other_users_by_name() -> None:
    moving = inst("node2", old_host="node1")
    users = [inst("node5"), inst("node4"), inst("node3"), inst("node2"), inst(None), moving]
    assert cache_holders(moving, "node3", users) == ["node2", "node1", "node4", "node5"]


def test_the_asking_host_never_asks_itself() -> None:
    assert cache_holders(inst("node1"), "node1", [inst("node1")]) == []
    assert cache_holders(inst("node1", old_host="node1"), "node2", []) == ["node1"]


@pytest.mark.parametrize(("image_id", "instances", "expected"), [
    (IMG, [inst("node1")], True),
    (IMG, [inst("node2", old_host="node1")], True),  # a cold move's kept copy overlays it here
    (IMG, [inst("node2", OTHER, rescue_image_id=IMG)], False),  # rescued elsewhere
    (IMG, [inst("node1", OTHER, rescue_image_id=IMG)], True),
    (IMG, [inst("node2")], False),  # cached here maybe, but no instance here uses it
    (IMG, [inst("node1", OTHER)], False),
    (IMG, [], False),
    (IMG.upper(), [inst("node1", IMG.upper())], False),  # not a canonical uuid
    ("../../etc/passwd", [inst("node1", "../../etc/passwd")], False),
])
def test_a_host_gives_out_a_base_only_while_one_of_its_instances_uses_it(
        image_id: str, instances: list[dict[str, Any]], expected: bool) -> None:
    assert serves_base(image_id, "node1", instances) is expected


def test_valid_image_ids_are_canonical_uuids() -> None:
    assert valid_image_id(IMG)
    assert not valid_image_id("")
    assert not valid_image_id("{" + IMG + "}")
    assert not valid_image_id(IMG.replace("-", ""))


async def test_the_serving_side_sends_the_cached_file_and_refuses_a_symlink_or_a_missing_base(
        tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    cache.base_dir.mkdir()
    request = make_mocked_request("GET", f"/internal/v1/images/{IMG}/cached-base")
    with pytest.raises(NotFound):
        await transfer.serve_cached_base(request, cache, IMG)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a base")
    cache.path_for(IMG).symlink_to(secret)
    with pytest.raises(NotFound):  # a link out of _base is never followed
        await transfer.serve_cached_base(request, cache, IMG)
    cache.path_for(IMG).unlink()
    cache.path_for(IMG).write_bytes(b"BASE" * 1000)
    response = await transfer.serve_cached_base(request, cache, IMG)
    assert response.status == 200 and response.headers["Content-Length"] == "4000"
