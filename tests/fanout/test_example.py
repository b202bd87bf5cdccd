"""examples/fanout_shop.py: four worker processes whose in-process caches stay fresh."""

from __future__ import annotations

import json
import time
import typing as t
import urllib.request

import pytest
import sqlalchemy as sa

from tests.fanout.conftest import new_name
from tests.fanout.conftest import WAIT
from tests.fanout.transports import postgresql_url
from tests.test_examples import load_example

pytestmark = [pytest.mark.backends("postgresql"), pytest.mark.transports("postgresql")]

shop = load_example("fanout_shop")


def get(url: str, method: str = "GET") -> dict[str, t.Any]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        body: dict[str, t.Any] = json.loads(response.read())
        return body


def eventually_priced(url: str, price: int) -> bool:
    """Whether the worker at ``url`` serves ``price`` within the wait (the fan-out is async)."""
    for _ in range(int(WAIT * 20)):
        if get(url)["price"] == price:
            return True
        time.sleep(0.05)
    return False


def test_a_price_changed_on_one_worker_is_fresh_on_all(
    engine: sa.Engine, transport_kind: str
) -> None:
    """Every worker caches the price; changed on one worker, every worker serves the new one."""
    url = engine.url.render_as_string(hide_password=False)
    workers = shop.start(url, postgresql_url(), workers=4, channel=new_name())
    try:
        first = [get(f"{worker}/products/1") for worker in workers.urls]
        assert [(r["price"], r["cached"]) for r in first] == [(3, False)] * 4
        assert len({r["pid"] for r in first}) == 4
        assert [get(f"{worker}/products/1")["cached"] for worker in workers.urls] == [True] * 4
        assert get(f"{workers.urls[0]}/products/1?price=4", method="POST")["price"] == 4
        assert all(eventually_priced(f"{worker}/products/1", 4) for worker in workers.urls)
        assert [get(f"{worker}/products/2")["price"] for worker in workers.urls] == [5] * 4
    finally:
        workers.stop()
        with engine.begin() as connection:
            shop.Base.metadata.drop_all(connection)
