"""The worker: leased batches, wake-ups, graceful stops; drain()."""

from __future__ import annotations

import signal
import threading

import pytest

from sa_signals import outbox
from sa_signals.outbox.claims import Claimer
from sa_signals.outbox.dispatch import new_token
from tests.conftest import async_url
from tests.outbox import app
from tests.outbox.helpers import start_worker
from tests.outbox.helpers import wait_for


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


class TestWorker:
    def test_runs_rows_committed_while_it_waits(self, ob, factory):
        """Rows left to workers run once each, by a worker with several threads."""
        worker = outbox.Worker(factory, concurrency=2, poll=0.05)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            for n in range(6):
                with factory.begin() as session:
                    outbox.enqueue(session, app.record_later, str(n))
            wait_for(lambda: len(ob.effects()) == 6, "six effects")
        finally:
            worker.stop()
            thread.join()
        assert sorted(ob.effects()) == [str(n) for n in range(6)]
        assert ob.rows() == []
        assert worker.ran == 6

    @pytest.mark.backends("postgresql", "mariadb")  # SQLite has one writer: threads wait on it
    def test_concurrent_threads_never_run_a_row_twice(self, ob, factory):
        """Four threads claiming small batches of 120 rows run each exactly once."""
        with factory.begin() as session:
            for n in range(120):
                outbox.enqueue(session, app.record_later, str(n))
        worker = outbox.Worker(factory, concurrency=4, batch=5, poll=0.05)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_for(lambda: not ob.rows(), "an empty outbox")
        finally:
            worker.stop()
            thread.join()
        assert sorted(ob.effects(), key=int) == [str(n) for n in range(120)]
        assert worker.ran == 120

    def test_stop_releases_the_rest_of_the_batch(self, ob, factory):
        """On stop the running row finishes; the rest of its batch is due again, uncounted."""
        with factory.begin() as session:
            for n in range(4):
                outbox.enqueue(session, app.slow, str(n), 0.3, delay=0)
        worker = outbox.Worker(factory, batch=4, poll=0.05)
        thread = threading.Thread(target=worker.run)
        app.started.clear()
        thread.start()
        assert app.started.wait(30)  # the first row of the batch is running
        worker.stop()
        thread.join()
        assert ob.effects() == ["0"]
        assert [(r.attempts, r.locked_by) for r in ob.rows()] == [(0, None)] * 3

    @pytest.mark.backends("postgresql")
    def test_notify_after_commit_wakes_the_worker(self, ob, factory):
        """A worker that would poll once an hour runs a row as soon as its NOTIFY arrives."""
        worker = outbox.Worker(factory, poll=3600)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_for(lambda: len(ob.effects()) == 0 and worker._wake.is_set() is False, "idle")
            with factory.begin() as session:
                outbox.enqueue(session, app.record_later, "woken")
            wait_for(lambda: ob.effects() == ["woken"], "the woken worker")
        finally:
            worker.stop()
            thread.join()

    def test_rejects_a_concurrency_below_one(self, ob, factory):
        """A worker needs at least one thread."""
        with pytest.raises(ValueError, match="concurrency of 1 or more"):
            outbox.Worker(factory, concurrency=0)


class TestDrain:
    def test_returns_how_many_ran(self, ob, factory):
        """drain() runs each due row once and counts them; nothing is left pending."""
        with factory.begin() as session:
            for n in range(3):
                outbox.enqueue(session, app.record_later, str(n))
        assert outbox.drain(factory) == 3
        assert outbox.drain(factory) == 0
        assert ob.effects() == ["0", "1", "2"]

    def test_drains_an_async_factory(self, ob, AsyncScoped, arunner):
        """With an async factory drain() is awaited, and runs coroutine handlers."""

        async def scenario() -> int:
            async with AsyncScoped.session_factory.begin() as session:
                await outbox.enqueue(session, app.arecord, "a", delay=0.0)
                await outbox.enqueue(session, app.record_later, "b")
            return await outbox.drain(AsyncScoped)

        assert arunner.run(scenario()) == 2
        assert ob.effects() == ["a", "b"]

    def test_skips_rows_not_yet_due(self, ob, factory):
        """A delayed row and a row leased to a live worker are not drained."""
        with factory.begin() as session:
            outbox.enqueue(session, app.record, "later", delay=60)
            outbox.enqueue(session, app.record_later, "leased")
        Claimer(factory).claim(new_token())
        assert outbox.drain(factory) == 0


@pytest.mark.backends("sqlite")  # what a process adds; each backend runs in-process (test_cli)
class TestWorkerProcess:
    def test_sigterm_stops_the_worker_cleanly(self, ob, engine, factory):
        """The CLI worker runs rows, and exits 0 on SIGTERM."""
        process = start_worker(url_of(engine), "--poll", "0.05")
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.record_later, "cli")
            wait_for(lambda: ob.effects() == ["cli"], "the worker process")
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "outbox worker stopped after 1 rows" in output


@pytest.mark.backends("sqlite")  # likewise
class TestAsyncWorkerProcess:
    def test_cli_runs_an_async_worker_for_an_async_url(self, ob, engine, backend, factory):
        """With an async driver's URL the CLI worker runs coroutine handlers; SIGTERM stops it."""
        url = async_url(backend, engine).render_as_string(hide_password=False)
        process = start_worker(url, "--poll", "0.05")
        try:
            with factory.begin() as session:
                outbox.enqueue(session, app.arecord, "async-cli", delay=0)
            wait_for(lambda: ob.effects() == ["async-cli"], "the async worker process")
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "outbox worker stopped after 1 rows" in output
