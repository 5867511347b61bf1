"""/v1/servers/{id}/password over real HTTP and SQLite (fake driver): the owner reads and clears
the password the guest posted through the metadata service (tests/unit/test_metadata.py posts it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvd.catalog.cmd_compute import InstancePasswordSet
from hvd.identity.service import now_iso
from tests.conftest import Api
from tests.functional.compute_helpers import action, make_flavor, make_qcow2, upload_image


async def test_the_owner_reads_and_clears_the_password_the_guest_posted(admin_api: Api, api_server: tuple[Any, str],
                                                                        tmp_path: Path) -> None:
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api)
    _, server = await admin_api.call("POST", "/v1/servers?wait=true", {"name": "pw", "flavor": "m1.tiny",
                                                                       "image": "base"})
    url = f"/v1/servers/{server['id']}/password"
    assert await admin_api.call("GET", url) == (200, {"password": ""})
    # what the metadata service proposes when the guest posts (no guest network with the fake driver)
    await api_server[0].catalog.propose(InstancePasswordSet(id=server["id"], password="ZW5j", updated_at=now_iso()))
    assert await admin_api.call("GET", url) == (200, {"password": "ZW5j"})
    _, shown = await admin_api.call("GET", f"/v1/servers/{server['id']}")
    assert "ZW5j" not in str(shown), "the password is not part of the server's view"

    await admin_api.call("POST", "/v1/projects", {"name": "other"})
    await admin_api.call("POST", "/v1/users", {"name": "eve", "password": "eve-secret", "project": "other",
                                               "role": "member"})
    eve = admin_api.as_other()
    await eve.login("eve", "eve-secret", "other")
    assert (await eve.call("GET", url))[0] == 404, "another project's server"
    assert (await eve.call("DELETE", url))[0] == 404

    assert (await admin_api.call("DELETE", url))[0] == 204
    assert await admin_api.call("GET", url) == (200, {"password": ""})
    assert (await admin_api.call("GET", "/v1/servers/no-such-server/password"))[0] == 404


async def test_a_rebuilt_guest_may_post_its_new_password(admin_api: Api, api_server: tuple[Any, str],
                                                         tmp_path: Path) -> None:
    """A rebuild starts a new guest from the image: the old password goes, or the new guest's post
    would be refused (409, Nova's once-only rule) and its owner could never read its password."""
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api)
    _, server = await admin_api.call("POST", "/v1/servers?wait=true", {"name": "pw", "flavor": "m1.tiny",
                                                                       "image": "base"})
    catalog = api_server[0].catalog
    await catalog.propose(InstancePasswordSet(id=server["id"], password="b2xk", updated_at=now_iso()))
    status, rebuilt = await action(admin_api, server["id"], "rebuild", {"image": "base"})
    assert status == 202 and rebuilt["status"] == "ACTIVE", rebuilt
    url = f"/v1/servers/{server['id']}/password"
    assert await admin_api.call("GET", url) == (200, {"password": ""})
    await catalog.propose(InstancePasswordSet(id=server["id"], password="bmV3", updated_at=now_iso()))
    assert await admin_api.call("GET", url) == (200, {"password": "bmV3"})


def test_an_evacuation_clears_the_password_only_of_a_server_rebuilt_from_its_image() -> None:
    from hvd.catalog.cmd_compute import BOOT_VOLUME_KEY, PASSWORD_KEY
    from hvd.compute.service import evacuated_extra

    from_image = {"id": "a", "extra": {PASSWORD_KEY: "b2xk"}}
    from_volume = {"id": "b", "extra": {PASSWORD_KEY: "b2xk", BOOT_VOLUME_KEY: "vol-1"}}
    assert evacuated_extra(from_image, "node3") == {"evacuated_from": "node3", PASSWORD_KEY: ""}
    assert evacuated_extra(from_volume, "node3") == {"evacuated_from": "node3"}  # same disk, same guest
