"""Every task a `TaskQuery` matches, however many: `Store.list_tasks` a page at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from legion.store.base import TaskReader
from legion.store.types import TaskQuery
from legion.task import TaskInfo

PAGE = 1000


async def all_tasks(store: TaskReader, query: TaskQuery) -> AsyncIterator[TaskInfo]:
    """The tasks ``query`` matches (its ``before`` and ``limit`` aside), newest first,
    read ``PAGE`` at a time."""
    query = dataclasses.replace(query, before=None, limit=PAGE)
    while True:
        page = await store.list_tasks(query)
        for info in page:
            yield info
        if len(page) < PAGE:
            return
        query = dataclasses.replace(query, before=page[-1].id)
