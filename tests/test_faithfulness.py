"""The faithfulness table (docs/faithfulness.md) read back from the code: each row's "promptseg" value is what
`promptseg settings` prints for every architecture the row names, on a folder holding that architecture's
published denoiser config (the profiles recognise it from there)."""

import json
from pathlib import Path

import pytest

from promptseg.cli import main
from promptseg.models.dit_configs import dit_configs
from promptseg.models.flux_configs import flux_configs
from promptseg.models.sd_configs import configs

TABLE = Path(__file__).resolve().parents[1] / "docs" / "faithfulness.md"
ARCHITECTURES = {
    "sd15": ("unet", lambda: configs("sd15")["unet"]),
    "sd21-base": ("unet", lambda: configs("sd21-base")["unet"]),
    "sd21": ("unet", lambda: configs("sd21")["unet"]),
    "sdxl": ("unet", lambda: configs("sdxl")["unet"]),
    "sd3-medium": ("transformer", lambda: dit_configs("sd3")["transformer"]),
    "sd35-medium": ("transformer", lambda: dit_configs("sd35")["transformer"]),
    "sd35-large": ("transformer", lambda: dit_configs("sd35-large")["transformer"]),
    "flux1": ("transformer", lambda: flux_configs("flux1")["transformer"]),
    "flux1-schnell": ("transformer", lambda: flux_configs("flux1-schnell")["transformer"]),
}
GROUPS = {"unets": ["sd15", "sd21-base", "sd21", "sdxl"], "sd3": ["sd3-medium", "sd35-medium"],
          "flux": ["flux1", "flux1-schnell"]}
GROUPS["transformers"] = GROUPS["sd3"] + ["sd35-large"] + GROUPS["flux"]
GROUPS["all"] = list(ARCHITECTURES)


def table_rows() -> list[dict]:
    lines = [line for line in TABLE.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict:
    """{architecture: {(method, setting): printed JSON value}} from `promptseg settings`."""
    import contextlib
    import io

    out = {}
    for name, (subfolder, config) in ARCHITECTURES.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / subfolder).mkdir()
        (folder / subfolder / "config.json").write_text(json.dumps(config()))
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["settings", str(folder)]) == 0
        values = {}
        for line in buffer.getvalue().splitlines():
            # "method     setting                value                                    origin"
            head, _, rest = line.partition(" ")
            if head == "(filter":  # "(filter clip) model ..."
                kind, _, rest = rest.partition(" ")
                head = f"(filter {kind}"
            setting, _, rest = rest.strip().partition(" ")
            value = json.JSONDecoder().raw_decode(rest.strip())[0]
            values[(head, setting)] = value
        out[name] = values
    return out


def test_the_table_names_known_architectures_and_every_row_has_a_value():
    rows = table_rows()
    assert len(rows) >= 40
    for row in rows:
        for group in row["architectures"].split(", "):
            assert group in GROUPS or group in ARCHITECTURES, row
        assert row["promptseg"].startswith("`") and row["promptseg"].endswith("`"), row
        assert row["matches"] in ("yes", "adapted", "ours"), row


def test_the_promptseg_column_is_what_promptseg_settings_prints(printed):
    checked = 0
    for row in table_rows():
        expected = json.loads(row["promptseg"].strip("`"))
        names = [a for group in row["architectures"].split(", ") for a in GROUPS.get(group, [group])]
        for name in names:
            key = (row["method"], row["setting"])
            assert key in printed[name], f"{name} prints no {key}"
            assert printed[name][key] == expected, f"{name} {key}: the table says {expected!r}, the code {printed[name][key]!r}"
            checked += 1
    assert checked >= 100
