"""Embedded Raft: a pure node (node.py), durable storage, transports and an asyncio driver."""
