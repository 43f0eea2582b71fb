"""A plan's digest: what its job set is made of, in one hash, so a resume of an unchanged plan
can take its jobs from the run folder instead of expanding and checking them again.

The digest covers the manifest's bytes, the values its `{file:}` and `{csv:}` sources gave
(in `Manifest.data`), the schema file each of its models is checked against (path and bytes),
the options that change the job set or its checks (a selection, `--strict`) and batchrun's
version. `run` records it in state.db's meta (`PLAN_META`) with what the plan told the user
(its warnings and its estimate), which a resume says again without the plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from batchrun import __version__
from batchrun.catalog import models
from batchrun.errors import BatchrunError
from batchrun.plan.manifest import Manifest

PLAN_META = "plan_digest"  # state.db meta key: the PlanMark of the plan whose jobs it holds


@dataclass(frozen=True)
class PlanMark:
    """A plan's digest and what `run` says of the plan before running it."""

    digest: str
    warnings: tuple[str, ...] = ()
    est_usd: Decimal = Decimal(0)  # the estimate of the plan's priced jobs
    unpriced: int = 0  # its jobs without a price

    def dumps(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "warnings": list(self.warnings),
                "est_usd": str(self.est_usd),
                "unpriced": self.unpriced,
            }
        )

    @classmethod
    def loads(cls, text: str | None) -> PlanMark | None:
        """The mark as state.db holds it; None when absent or unreadable (then: no shortcut)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(
                digest=str(data["digest"]),
                warnings=tuple(str(w) for w in data["warnings"]),
                est_usd=Decimal(str(data["est_usd"])),
                unpriced=int(data["unpriced"]),
            )
        except (ValueError, KeyError, TypeError, InvalidOperation):
            return None


def plan_digest(
    manifest: Manifest, schemas: models.Schemas, *, strict: bool = False, selection: str = ""
) -> str:
    """The digest of the plan `manifest` makes with `schemas`; "" when it cannot be made (a
    schema file that does not load: the full path says why)."""
    h = hashlib.sha256()
    data = json.dumps(manifest.data, sort_keys=True, separators=(",", ":"), default=repr)
    for part in (__version__, manifest.sha256, data, str(strict), selection):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    ids = sorted({str(m.get("id")) for m in manifest.data.get("models") or []})
    for model_id in ids:
        try:
            entry = schemas.entry(model_id)
            raw = b"" if entry is None else entry.path.read_bytes()
        except (BatchrunError, OSError, ValueError):
            return ""
        where = "" if entry is None else str(entry.path.resolve())
        h.update(f"{model_id}\0{where}\0".encode("utf-8", "surrogatepass"))
        h.update(hashlib.sha256(raw).digest())
    return h.hexdigest()
