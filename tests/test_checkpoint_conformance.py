"""LangGraph's own checkpointer conformance suite, on every backend.

``langgraph-checkpoint-conformance`` is the test suite LangGraph publishes for
checkpointers: every base capability (put, put_writes, get_tuple, list,
delete_thread) and every extended one (delete_for_runs, copy_thread, prune).
CrabSaver must implement them all and pass each, on a directory, on Redis
and on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from backends import Backend, backend  # noqa: F401 - the fixture
from langgraph.checkpoint import conformance
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from crab_langchain.checkpoint import CrabSaver


async def test_every_capability_passes(backend: Backend):
    @conformance.checkpointer_test(name=f"CrabSaver on {backend.kind}")
    async def crab_saver() -> AsyncIterator[CrabSaver]:
        yield CrabSaver(backend.store())

    report = await conformance.validate(crab_saver)
    results = {name: result for name, result in report.results.items()}
    assert set(results) == {capability.value for capability in ALL_CAPABILITIES}
    not_detected = [name for name, result in results.items() if not result.detected]
    assert not not_detected, f"capabilities not implemented: {not_detected}"
    failures = {name: result.failures for name, result in results.items() if not result.passed}
    assert not failures
    assert sum(result.tests_passed for result in results.values()) >= 80
