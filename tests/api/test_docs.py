"""``/docs`` and ``/redoc`` work offline: their HTML loads only assets the app serves itself."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import Api

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


def _asset_urls(html: str) -> list[str]:
    return [a or b for a, b in URL.findall(html)]


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"javascript": 1, "css": 1}),
        ("/redoc", {"javascript": 1}),
    ],
)
def test_docs_pages_use_only_local_assets(api: Api, page: str, expected: dict[str, int]) -> None:
    r = api.client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", r.text), f"{page} references another host"
    urls = _asset_urls(r.text)
    assert "/openapi.json" in r.text
    found: dict[str, int] = {}
    for url in urls:
        if url == "/openapi.json":
            continue
        assert url.startswith("/"), url
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        kind = asset.headers["content-type"]
        if url.endswith(".js"):
            assert "javascript" in kind, (url, kind)
            found["javascript"] = found.get("javascript", 0) + 1
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)
            found["css"] = found.get("css", 0) + 1
    assert found == expected


def test_docs_pages_are_not_in_the_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "/docs" not in paths and "/redoc" not in paths
