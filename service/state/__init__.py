"""Serving's state: the Redis key layout, the user state store (single node or cluster),
bulk state load and the embedded Redis / cluster launchers."""
