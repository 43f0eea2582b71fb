"""`batchrun init [DIR]`: a starter manifest and its prompts file; `batchrun schema`."""

from __future__ import annotations

from pathlib import Path

import click

from batchrun.errors import UsageError
from batchrun.plan.manifest import manifest_schema_path

MANIFEST_NAME = "sweep.yaml"
PROMPTS_NAME = "prompts.txt"

# {schema} is the installed manifest schema's absolute path, so editors that read the
# `$schema` line (yaml-language-server) find it from any folder.
STARTER = """\
# yaml-language-server: $schema={schema}
#
# A starter sweep: 3 prompts (one a line in prompts.txt) x 2 aspect ratios = 6 jobs.
# Try it offline on the built-in simulator (no token, nothing leaves your machine):
#   batchrun validate sweep.yaml
#   batchrun plan sweep.yaml
#   batchrun run sweep.yaml --simulate          # results in outputs/starter/
# Then on RunComfy (every job is billed; real results go to a folder of their own):
#   export RUNCOMFY_TOKEN=...
#   batchrun run sweep.yaml --run-dir outputs/starter-real
version: 1
name: starter                   # run name; outputs go to outputs/starter/

run:
  rate_limit: 5/s               # API calls per second (submit + status + result + cancel)
  max_in_flight: 4              # jobs submitted and not yet finished
  poll_interval: 2s
  job_timeout: 10m

outputs:
  dir: outputs/{{name}}           # the run folder: state.db, report.csv, report.html, files/

matrix:                         # input fields swept for every model (cartesian product)
  prompt: {{file: prompts.txt}}   # one value a line, relative to this file
  aspect_ratio: ["1:1", "16:9"]

models:
  - id: google/nano-banana-2-lite/text-to-image
"""

PROMPTS = """\
a lighthouse on a cliff at dawn, watercolor
a red fox in fresh snow, photograph
a bowl of ramen seen from above, studio light
"""


def init(directory: str) -> int:
    """Write the starter manifest and prompts file into `directory`; 0, or UsageError."""
    folder = Path(directory)
    targets = [folder / MANIFEST_NAME, folder / PROMPTS_NAME]
    existing = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if existing:
        one = len(existing) == 1
        raise UsageError(
            f"{' and '.join(existing)} already exist{'s' if one else ''}; batchrun init never "
            f"overwrites a file: move {'it' if one else 'them'} away, or start in another "
            "folder: batchrun init DIR"
        )
    folder.mkdir(parents=True, exist_ok=True)
    schema = manifest_schema_path()
    for path, text in ((targets[0], STARTER.format(schema=schema)), (targets[1], PROMPTS)):
        with path.open("x", encoding="utf-8") as f:  # "x": never replace a file
            f.write(text)
    manifest = targets[0]
    click.echo(f"wrote {manifest} and {targets[1]}")
    click.echo("try it offline on the built-in simulator:")
    click.echo(f"  batchrun validate {manifest}")
    click.echo(f"  batchrun run {manifest} --simulate")
    return 0


def schema() -> int:
    """Print the installed manifest schema's path (for an editor's `$schema`); 0."""
    click.echo(str(manifest_schema_path()))
    return 0
