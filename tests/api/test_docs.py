"""/docs works offline: Swagger UI's files come from the package, not a CDN."""

import re

from fastapi.testclient import TestClient

from api.main import app


def test_docs_serve_their_own_assets() -> None:
    client = TestClient(app)
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[1]
    assets = re.findall(r"""(?:src|href)=["']?(/docs-assets/[^"' >]+)""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), page.text
    assert any(a.endswith("swagger-ui.css") for a in assets), page.text
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "diffq"
