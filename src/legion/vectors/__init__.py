"""Vector collections: semantic memory per session and shared corpora, in the store.

``ctx.vectors(name, scope="session"|"shared")`` answers a :class:`Collection` with
``add``, ``search`` and ``delete``; embeddings are ``ctx.llm.embed`` calls. SQLite keeps
the vectors in the store's file (sqlite-vec), PostgreSQL in pgvector tables.
"""

from .collection import Collection
from .types import CollectionInfo, Hit, Item

__all__ = ["Collection", "CollectionInfo", "Hit", "Item"]
