"""SWIM gossip (with the Lifeguard refinements) for host membership, liveness and resource reports.

``core`` is the pure protocol state machine (fed packets and clock ticks, returns packets and
events), ``codec`` seals packets (AES-GCM, replay window), ``report`` is the member metadata,
``endpoint`` the asyncio UDP adapter and ``service`` what the daemon uses.
"""
