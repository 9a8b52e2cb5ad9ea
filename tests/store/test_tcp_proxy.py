"""The fault-injection proxy itself: a cut reaches the real PostgreSQL's clients."""

from __future__ import annotations

import pytest

from headway.errors import StoreUnavailable
from headway.store import Store
from headway.testing.pg import fresh_schema
from headway.testing.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


def test_a_cut_makes_postgresql_unavailable_and_a_restore_brings_it_back() -> None:
    with fresh_schema() as url, TcpProxy(("127.0.0.1", 5432)) as proxy:
        store = Store(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
        try:
            store.migrate()
            with store.tx() as tx:
                assert tx.lease().token == 0
            proxy.cut()
            with pytest.raises(StoreUnavailable), store.tx() as tx:
                tx.lease()
            proxy.restore()
            with store.tx() as tx:
                assert tx.lease().token == 0
            assert proxy.connections >= 2
        finally:
            store.close()
