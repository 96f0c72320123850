"""The merge of tenants' turns at a lease (`legion.store.turns`), over queues held in
lists as a store's index gives them: the order taken, and how much is read for it."""

from __future__ import annotations

from legion.store.turns import Turns, share_of

Task = tuple[int, int, str]  # (priority, id, tenant)


def lease(
    queues: dict[str, list[Task]], need: int, running: dict[str, int] | None = None
) -> tuple[list[str], int]:
    """Lease ``need`` as the stores do; answer the tenants taken in order and the reads."""
    turns: Turns[Task] = Turns(dict(running or {}), need)
    reads = 0

    def read(tenant: str, after: tuple[int, int] | None, n: int) -> None:
        nonlocal reads
        reads += 1
        rows = [t for t in queues[tenant] if after is None or (-t[0], t[1]) > (-after[0], after[1])]
        turns.read(tenant, [(p, i, (p, i, tenant)) for p, i, _ in rows[:n]], n)

    share = share_of(need, len(queues))
    for tenant in queues:
        read(tenant, None, share)
    while (more := turns.merge()) is not None:
        read(more, turns.last(more), turns.more(more))
    return [t[2] for t in turns.taken], reads


def queue(tenant: str, n: int, first_id: int, priority: int = 0) -> list[Task]:
    return [(priority, first_id + i, tenant) for i in range(n)]


def test_many_tenants_are_read_once_each() -> None:
    queues = {f"t{k:03}": queue(f"t{k:03}", 10, 1000 * k) for k in range(200)}
    taken, reads = lease(queues, 120)
    assert taken == sorted(queues)[:120]  # one each, oldest first
    assert reads == 200


def test_a_tenant_alone_with_more_is_read_again_twice_as_much_each_time() -> None:
    queues = {"big": queue("big", 1000, 1), "small": queue("small", 2, 5000)}
    taken, reads = lease(queues, 500)
    assert taken[:4] == ["big", "small", "big", "small"] and taken.count("big") == 498
    assert reads <= 2 + 8  # (250, then 500 at most: a few reads, not one per task)


def test_a_higher_priority_goes_first_whoever_read_it_and_turns_within_it() -> None:
    queues = {
        "a": queue("a", 6, 1, priority=5) + queue("a", 5, 100),
        "b": queue("b", 5, 200),
        "c": queue("c", 2, 300, priority=5),
    }
    taken, _ = lease(queues, 12)
    # Priority 5 first, a and c in turns; then 0, where a has 6 running and b none.
    assert taken == ["a", "c", "a", "c", *["a"] * 4, *["b"] * 4]


def test_the_tenant_with_fewer_running_goes_first() -> None:
    queues = {"busy": queue("busy", 5, 1), "calm": queue("calm", 5, 100)}
    taken, _ = lease(queues, 6, running={"busy": 3})
    assert taken == ["calm", "calm", "calm", "busy", "calm", "busy"]
