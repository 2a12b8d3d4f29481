import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_async.core.errors import AlreadyExists
from cri_async.core.names import NameIndex
from tests.support.poll import until


async def test_joiners_get_the_first_result_and_later_creates_conflict() -> None:
    idx = NameIndex("pod sandbox")
    made: list[str] = []

    async def factory() -> str:
        await asyncio.sleep(0.01)
        made.append("id1")
        idx.bind("k", "id1")
        return "id1"

    got = await asyncio.gather(*(idx.create("k", "k", factory) for _ in range(4)))
    assert got == ["id1"] * 4 and made == ["id1"]
    with pytest.raises(AlreadyExists, match="in use by pod sandbox id1"):
        await idx.create("k", "k", factory)
    idx.release("k", "id1")
    assert await idx.create("k", "k", factory) == "id1"


async def test_failure_is_shared_and_frees_the_name() -> None:
    idx = NameIndex("container")

    async def boom() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("nope")

    results = await asyncio.gather(
        *(idx.create("k", "k", boom) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert idx.holder("k") is None and not idx.inflight


async def test_cancelled_caller_does_not_cancel_the_create() -> None:
    idx = NameIndex("container")
    go = asyncio.Event()

    async def factory() -> str:
        await go.wait()  # still creating when its caller gives up
        idx.bind("k", "x")
        return "x"

    caller = asyncio.create_task(idx.create("k", "k", factory))
    await until(lambda: idx.inflight, what="the create to start")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert idx.inflight  # the create goes on without its caller
    go.set()
    await until(lambda: not idx.inflight, what="the create to settle")
    # The id was never delivered, so the retry collects it instead of ALREADY_EXISTS.
    assert await idx.create("k", "k", factory) == "x"
    with pytest.raises(AlreadyExists):
        await idx.create("k", "k", factory)


ops = st.lists(
    st.tuples(st.sampled_from(["create", "remove"]), st.integers(0, 3), st.integers(0, 3)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_at_most_one_holder_per_name(script: list[tuple[str, int, int]]) -> None:
    """Random interleavings of creates (with random latency) and removes: every name has at
    most one live object, and every successful create returns an object made for it."""

    async def run() -> None:
        idx = NameIndex("pod")
        live: dict[str, str] = {}  # id -> name
        made: dict[str, str] = {}  # every id ever created -> its name
        counter = iter(range(10_000))

        async def create(name: str, delay: int) -> None:
            async def factory() -> str:
                await asyncio.sleep(delay / 1000)
                new = f"id{next(counter)}"
                live[new] = made[new] = name
                idx.bind(name, new)
                return new

            try:
                got = await idx.create(name, name, factory)
            except AlreadyExists:
                assert idx.holder(name) is not None
                return
            # The id was made for this name (it may be removed again by now).
            assert made.get(got) == name

        tasks = []
        for op, n, delay in script:
            name = f"n{n}"
            if op == "create":
                tasks.append(asyncio.create_task(create(name, delay)))
            else:
                holder = idx.holder(name)
                if holder is not None:
                    idx.release(name, holder)
                    del live[holder]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        names = list(live.values())
        assert len(names) == len(set(names))
        for obj_id, name in live.items():
            assert idx.holder(name) == obj_id

    asyncio.run(run())
