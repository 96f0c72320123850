"""Vector collections: semantic memory per session and shared corpora, in the store.

``ctx.vectors(name, scope="session"|"shared")`` answers a `Collection` with
``add``, ``search`` and ``delete``; embeddings are ``ctx.llm.embed`` calls. SQLite keeps
the vectors in a file beside the store's (``runs.db`` -> ``runs.vectors.db``, sqlite-vec),
PostgreSQL in pgvector tables.
"""

from legion.vectors.collection import Collection
from legion.vectors.types import CollectionInfo, Hit, Item

__all__ = ["Collection", "CollectionInfo", "Hit", "Item"]
