"""cbor2 and line-protocol-parser are imported only when a senml/influx input is built, and an
install without them gets one line naming the extra (like OpenCV for camera pipelines)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("cbor2", "line_protocol_parser"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
""")


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_importing_the_codecs_imports_neither_library():
    result = run("""
        import sys
        from edgeloop.edge.ingest.senml import SenmlInput
        from edgeloop.edge.ingest.influx_line import InfluxLineInput
        SenmlInput(codec="senml", channels=["a"]).n_channels
        InfluxLineInput(codec="influx", fields=["a"]).n_channels
        # a JSON-only senml input needs no CBOR library either
        SenmlInput(codec="senml", channels=["a"], format="json").build()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("cbor2", "line_protocol_parser")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("settings, missing", [
    ("SenmlInput(codec='senml', channels=['a'])", "cbor2"),
    ("InfluxLineInput(codec='influx', fields=['a'])", "line-protocol-parser"),
])
def test_building_without_the_library_names_the_edge_extra(settings, missing):
    result = run(f"""
        from edgeloop.errors import MissingExtra
        from edgeloop.edge.ingest.senml import SenmlInput
        from edgeloop.edge.ingest.influx_line import InfluxLineInput
        try:
            {settings}.build()
        except MissingExtra as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert f"'edge' extra (missing: {missing})" in result.stdout and "pip install 'edgeloop[edge]'" in result.stdout
