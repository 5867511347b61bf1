"""Where a host gets the cached base of a server's image once the image itself is deleted.

Like Glance and Nova, hvd lets a user delete the image a server runs on, and unshelve deletes
the shelve snapshot the server was just booted from; deleted images leave every image store. The
server's root disk is an overlay on the cached base (``instances/_base``) of its host, so that host
still holds the base: a host that must boot the server (cold or live migration, resize) and lacks
the base copies it from the image cache of a host that has it, instead of from the image stores.
A host gives out a cached base only while one of its instances uses it. Pure decisions here; the
transfer lives in hvd.storage.transfer and the peer route in hvd.api.internal_compute.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

FROM_CACHES_STATUSES = frozenset({"deleted"})  # the image's data left the stores; cached bases remain


def valid_image_id(image_id: str) -> bool:
    """True for a canonical uuid string (the only image ids hvd makes)."""
    try:
        return str(uuid.UUID(image_id)) == image_id
    except ValueError:
        return False


def from_peer_caches(image: dict[str, Any], inst: dict[str, Any] | None) -> bool:
    """True when the base of ``image`` must come from another host's image cache: the image is
    deleted, and it is the image ``inst``'s root disk overlays (a rebuild or rescue with a deleted
    image still fails: no disk of the server depends on it)."""
    return (image["status"] in FROM_CACHES_STATUSES and inst is not None
            and inst.get("image_id") == image["id"])


def _hosts_of(inst: dict[str, Any]) -> list[str]:
    """The hosts whose image cache holds the base ``inst`` runs on: its host, and the source of a
    cold move that keeps its old copy there until the move is confirmed."""
    extra = inst.get("extra") or {}
    return [h for h in (inst.get("host"), extra.get("old_host")) if h]


def cache_holders(inst: dict[str, Any], me: str, users: Iterable[dict[str, Any]]) -> list[str]:
    """Hosts to ask for the cached base of ``inst``'s image, best first and without ``me``: the
    instance's own host (its disk overlays the base there), the source it keeps a copy on, then
    the hosts of the other instances that use the image (``users``: instance rows), by name."""
    first = [h for h in _hosts_of(inst) if h != me]
    others = sorted({h for u in users for h in _hosts_of(u)} - set(first) - {me})
    return list(dict.fromkeys(first)) + others


def serves_base(image_id: str, me: str, instances: Iterable[dict[str, Any]]) -> bool:
    """True when host ``me`` may give out its cached base of ``image_id``: some instance whose disk
    is on ``me`` (or kept there by an unconfirmed move) uses it as its image or rescue image.
    Never for an id that is not a uuid (cache names derive from it)."""
    if not valid_image_id(image_id):
        return False
    for inst in instances:
        extra = inst.get("extra") or {}
        if me in _hosts_of(inst) and image_id in (inst.get("image_id"), extra.get("rescue_image_id")):
            return True
    return False
