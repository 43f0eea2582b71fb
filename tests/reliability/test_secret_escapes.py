"""A server echoing the token where the scrubber did not look: the HTTP reason phrase, JSON
escapes (\\uXXXX, \\/) in an error, a request id, a failed result's error or an output URL.
The token reaches no file of the run folder and neither stdout nor stderr. A token with
whitespace or a control character is refused before any request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import TOKEN, run_cli
from .hostile_api import Call, HostileApi, Reply, manifest_for

SLASHED = "tok/SECRET/7f3a9c"  # a token with slashes, which JSON may write as \/


def u_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def half_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04X}" if i % 2 else c for i, c in enumerate(text))


def slash_escaped(text: str) -> str:
    return text.replace("/", "\\/")


def raw_json(template: str, form: str) -> Reply:
    return Reply(body=template.replace("FORM", form))


ESCAPES = {"u": u_escaped, "half-u": half_escaped, "slash": slash_escaped}

WHERE = {
    # a submit refused with the token in its message
    "submit-error": lambda form: {
        "submit": Reply(
            422, '{"error_message": "bad token FORM", "detail": "FORM"}'.replace("FORM", form)
        )
    },
    # the token inside the request id (then in every URL batchrun builds with it)
    "request-id": lambda form: {"submit": raw_json('{"request_id": "r-FORM"}', form)},
    "failed-result": lambda form: {
        "result": raw_json(
            '{"status": "failed", "error": {"message": "FORM", "code": "FORM"}}', form
        )
    },
    "output-url": lambda form: {
        "result": raw_json(
            '{"status": "succeeded", "output": {"image": "https://x.runcomfy.net/FORM.png"}}', form
        )
    },
    "html-error": lambda form: {"result": Reply(500, f"<html><title>{form}</title></html>")},
}


def _leaks(root: Path, outputs: list[str], token: str) -> list[str]:
    forms = {token, u_escaped(token), slash_escaped(token), json.dumps(token)[1:-1]}
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes().decode("utf-8", "replace")
            found += [f"{p.name}: {f!r}" for f in forms if f in data]
    for i, text in enumerate(outputs):
        found += [f"output {i}: {f!r}" for f in forms if f in text]
    return found


def _run(tmp_path: Path, api: HostileApi, token: str) -> tuple[int, str]:
    manifest = tmp_path / "m.yaml"
    res = run_cli(
        "run",
        str(manifest),
        "--api-base",
        api.base_url,
        "--run-dir",
        str(tmp_path / "run"),
        token=token,
        timeout=90,
    )
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("where", sorted(WHERE))
def test_an_escaped_token_is_scrubbed(tmp_path: Path, where: str, escape: str) -> None:
    token = SLASHED if escape == "slash" else TOKEN
    replies = WHERE[where](ESCAPES[escape](token))

    def answer(call: Call) -> Reply | None:
        return replies.get(call.kind)

    manifest_for(tmp_path, 2, run={"retries": 0, "job_timeout": "2s"})
    with HostileApi(answer) as api:
        code, out = _run(tmp_path, api, token)
        report = run_cli("report", str(tmp_path / "run"), token=None, timeout=60)
    assert "Traceback" not in out, out
    assert api.calls["submit"] >= 1
    leaks = _leaks(tmp_path / "run", [out, report.stdout + report.stderr], token)
    assert leaks == [], f"{where}/{escape}: {leaks}\n{out[-2000:]}"


@pytest.mark.parametrize("kind", ["submit", "result"])
@pytest.mark.parametrize("status", [401, 500, 400])
def test_a_token_in_the_reason_phrase_is_scrubbed(tmp_path: Path, kind: str, status: int) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == kind:
            return Reply(status, b"", reason=f"Unauthorized Bearer {TOKEN}")
        return None

    manifest_for(tmp_path, 1, run={"retries": 0, "job_timeout": "2s"})
    with HostileApi(answer) as api:
        code, out = _run(tmp_path, api, TOKEN)
    assert "Traceback" not in out, out
    assert _leaks(tmp_path / "run", [out], TOKEN) == [], out[-2000:]


# Leading and trailing whitespace is stripped from RUNCOMFY_TOKEN; inside, it is refused.
@pytest.mark.parametrize(
    "token", [TOKEN + "\nX-Evil: 1", "tok SECRET", "tok\tSECRET", "tok\x01SECRET", "tok\x7fS"]
)
def test_a_token_with_whitespace_or_control_characters_is_refused(
    tmp_path: Path, token: str
) -> None:
    manifest_for(tmp_path, 1)
    with HostileApi() as api:
        code, out = _run(tmp_path, api, token)
    assert code == 3, out
    assert sum(api.calls.values()) == 0, api.log
    assert "Traceback" not in out and token.strip() not in out
    assert "whitespace or a control character" in out
