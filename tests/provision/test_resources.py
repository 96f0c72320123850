"""Needs and offers: parsing, normalizing and matching, and what a worker reports of them."""

from __future__ import annotations

from pathlib import Path

import pytest

import legion
from legion.errors import ConfigError
from legion.resources import encode, normalize, parse_offer, satisfies


def test_tags_and_amounts_normalize_to_one_mapping() -> None:
    assert normalize(["gpu"]) == {"gpu": 1.0}
    assert normalize({"memory_mb": 512, "gpu": 1}) == {"gpu": 1.0, "memory_mb": 512.0}
    assert normalize(None) == {}


@pytest.mark.parametrize("bad", ["gpu", {"GPU": 1}, {"gpu": -1}, {"gpu": True}, ["a b"]])
def test_malformed_resources_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        normalize(bad)  # type: ignore[arg-type]


def test_offer_from_the_command_line() -> None:
    assert parse_offer("memory_mb=4096, gpu") == {"gpu": 1.0, "memory_mb": 4096.0}
    assert parse_offer("") == {}
    with pytest.raises(ValueError, match="--offer"):
        parse_offer("memory_mb=lots")


def test_satisfies_needs_every_amount() -> None:
    assert satisfies({"gpu": 1, "memory_mb": 4096}, {"memory_mb": 512})
    assert not satisfies({"memory_mb": 256}, {"memory_mb": 512})
    assert not satisfies({}, {"gpu": 1})
    assert satisfies({}, {})


def test_an_agent_carries_its_needs_into_the_store() -> None:
    @legion.agent(resources={"memory_mb": 512, "gpu": 1})
    async def big(ctx: legion.Context, x: int) -> int:
        return x

    @legion.agent
    async def small(ctx: legion.Context, x: int) -> int:
        return x

    assert big.needs == encode({"gpu": 1.0, "memory_mb": 512.0}) == '{"gpu":1.0,"memory_mb":512.0}'
    assert small.needs is None
    with pytest.raises(ConfigError, match="lower-case word"):
        legion.agent(resources=["GPU"])


def test_needs_become_ray_scheduling_options() -> None:
    from legion.resources import ray_options

    opts = ray_options(
        {"gpu": 1.0, "memory_mb": 512.0, "widget": 2.0}, num_cpus=1.0, resources={"pool": 1.0}
    )
    assert opts == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "memory": 512 * 1024 * 1024,
        "resources": {"pool": 1.0, "widget": 2.0},
    }
    assert ray_options({"cpu": 4.0}, num_cpus=1.0, resources={}) == {
        "num_cpus": 4.0,
        "resources": {},
    }


async def test_a_worker_reports_the_agents_its_offer_does_not_cover(tmp_path: Path) -> None:
    # `legion status` took an agent as served by any live worker that imported it, one
    # whose --offer could never lease its tasks included.
    import legion

    @legion.agent(name="on-gpu", resources=["gpu"])
    async def on_gpu(ctx: legion.Context) -> None:
        return None

    @legion.agent(name="anywhere")
    async def anywhere(ctx: legion.Context) -> None:
        return None

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with legion.Runtime(url, agents=[on_gpu, anywhere]) as rt:
        assert rt.worker is not None
        assert rt.worker.health()["uncovered"] == ["on-gpu"]
    async with legion.Runtime(url, agents=[on_gpu, anywhere], offer={"gpu": 1}) as rt:
        assert rt.worker is not None
        assert rt.worker.health()["uncovered"] == []
