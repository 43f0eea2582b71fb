"""`batchrun --help` starts without loading the run machinery: commands are imported on use."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from batchrun.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
HEAVY = ("requests", "jsonschema", "tqdm", "batchrun.run.engine")
print("loaded:" + ",".join(sorted(m for m in HEAVY if m in sys.modules)))
"""


def test_help_loads_no_command_module_and_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.splitlines()[-1] == "loaded:"


def test_a_command_module_is_loaded_on_first_use() -> None:
    code = (
        "import sys, batchrun.commands as c; c.status; "
        "print('batchrun.commands.status' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "True"


def test_the_commands_that_read_a_run_folder_load_no_manifest_machinery() -> None:
    # report, status and compare of a large folder are timed in seconds: jsonschema and the
    # plan's modules cost a tenth of one, and none of them parses a manifest (report does,
    # only to find a grid state.db does not keep, then it imports the manifest's module).
    code = (
        "import sys, batchrun.commands as c; c.report; c.status; c.compare; "
        "heavy = ('requests', 'jsonschema', 'batchrun.plan.manifest', 'batchrun.plan.grid'); "
        "print('loaded:' + ','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "loaded:"
