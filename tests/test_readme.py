"""The README's library example runs as written against our own Q/R SCP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from dimse.archive import Archive
from dimse.qr_scp import archive_server
from tests.peers import make_ct

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_example_finds_the_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "archive"
    storage.mkdir()
    make_ct(storage / "a.dcm", patient_id="P1", patient_name="DOE^JANE", study_uid="1.2.826.1",
            series_uid="1.2.826.1.1", sop_uid="1.2.826.1.1.1")
    make_ct(storage / "b.dcm", patient_id="P2", patient_name="ROE^RICHARD", study_uid="1.2.826.2",
            series_uid="1.2.826.2.1", sop_uid="1.2.826.2.1.1")
    archive = Archive(storage)
    archive.index()

    async def run() -> None:
        async with archive_server(archive, "ARCHIVE") as server:
            code = _example().replace("11112", str(server.port))
            code = code.replace("asyncio.run(main())", "")
            namespace: dict[str, object] = {}
            exec(compile(code, "README.md", "exec"), namespace)
            await asyncio.wait_for(namespace["main"](), 20)  # type: ignore[operator]

    try:
        asyncio.run(run())
    finally:
        archive.close()
    out = capsys.readouterr().out.split("\n")
    assert "DOE^JANE 1.2.826.1" in out
    assert not any("ROE" in line for line in out)
