"""Local files as inputs in a manifest: `{local:}` and `{glob:}` read into references, where
they may stand, what makes one impossible to send (each an exit-2 problem naming the manifest
line, the file and the fix), and job ids that follow the bytes, never the path."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from batchrun.cli import main
from batchrun.errors import ManifestError, MissingDependencyError
from batchrun.plan import delivery
from batchrun.plan.build import build_plan
from batchrun.plan.localfiles import read_facts
from batchrun.run.inputs import check_ready
from batchrun.util.media import sniff
from testing.media import (
    FLUX,
    NANO_EDIT,
    image_bytes,
    write_big_image,
    write_image,
    write_video,
)

MIB = 1024 * 1024


def write(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def flux(folder: Path, image: str, extra: str = "") -> Path:
    """A one-model manifest whose image_url is `image` (YAML text)."""
    text = f"""\
        version: 1
        models:
          - id: {FLUX}
            inputs:
              prompt: edit it
              image_url: {image}
        """
    return write(folder, textwrap.dedent(text) + extra + "\n")


def problems(path: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        build_plan(path)
    return str(caught.value)


# ---- reading the files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_the_type_comes_from_the_bytes_not_the_name(tmp_path: Path, fmt: str, mime: str) -> None:
    path = tmp_path / "misnamed.gif"
    path.write_bytes(image_bytes((9, 9, 9), fmt))
    assert read_facts(path).mime == mime
    assert sniff(b"\x00\x00\x00\x18ftypmp42....") == "video/mp4"
    assert sniff(b"plain text, not media") is None


def test_glob_gives_one_job_per_file_sorted_by_path(tmp_path: Path) -> None:
    for name, color in (("c.png", (3, 0, 0)), ("a.jpg", (1, 0, 0)), ("sub/b.webp", (2, 0, 0))):
        write_image(
            tmp_path / "photos" / name, color, {"png": "PNG", "jpg": "JPEG"}.get(name[-3:], "WEBP")
        )
    path = write(
        tmp_path,
        f"""\
        version: 1
        matrix:
          image_url: {{glob: "photos/**/*.*"}}
        models:
          - id: {FLUX}
            inputs: {{prompt: edit it}}
        """,
    )
    plan = build_plan(path)
    refs = [job.inputs["image_url"] for job in plan.jobs]
    assert [r["local"] for r in refs] == ["photos/a.jpg", "photos/c.png", "photos/sub/b.webp"]
    assert [r["mime"] for r in refs] == ["image/jpeg", "image/png", "image/webp"]
    assert refs[0]["bytes"] == (tmp_path / "photos/a.jpg").stat().st_size


def test_local_in_a_list_a_case_row_and_a_case_glob(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (1, 1, 1))
    write_image(tmp_path / "b.png", (2, 2, 2))
    write_image(tmp_path / "shots/x.png", (3, 3, 3))
    write_image(tmp_path / "shots/y.png", (4, 4, 4))
    path = write(
        tmp_path,
        f"""\
        version: 1
        models:
          - id: {NANO_EDIT}
            inputs:
              prompt: mix them
              image_urls: [{{local: a.png}}, {{local: b.png}}]
          - id: {FLUX}
            cases:
              - {{prompt: one, image_url: {{local: a.png}}}}
              - {{prompt: each, image_url: {{glob: "shots/*.png"}}}}
        """,
    )
    plan = build_plan(path)
    nano = [j for j in plan.jobs if j.model_id == NANO_EDIT]
    assert [r["local"] for r in nano[0].inputs["image_urls"]] == ["a.png", "b.png"]
    rows = [(j.inputs["prompt"], j.inputs["image_url"]["local"]) for j in plan.jobs[1:]]
    assert rows == [("one", "a.png"), ("each", "shots/x.png"), ("each", "shots/y.png")]


# ---- identity -------------------------------------------------------------------------


def test_moving_the_folder_keeps_every_id_and_same_bytes_are_one_job(tmp_path: Path) -> None:
    first = tmp_path / "first"
    write_image(first / "photos/a.png", (10, 20, 30))
    write_image(first / "photos/b.png", (40, 50, 60))
    shutil.copy(first / "photos/a.png", first / "photos/a-copy.png")  # the same bytes
    text = f"""\
        version: 1
        matrix:
          image_url: {{glob: "photos/*.png"}}
        models:
          - id: {FLUX}
            inputs: {{prompt: edit it}}
        """
    write(first, text)
    before = build_plan(first / "m.yaml")
    assert len(before.jobs) == 2  # a.png and a-copy.png are one job
    assert any("same inputs" in w for w in before.warnings)
    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    (moved / "photos" / "b.png").rename(moved / "photos" / "renamed.png")
    after = build_plan(moved / "m.yaml")
    assert [j.job_id for j in after.jobs] == [j.job_id for j in before.jobs]
    # Other bytes are another job.
    write_image(moved / "photos/b.png", (41, 50, 60))
    assert (
        len({j.job_id for j in build_plan(moved / "m.yaml").jobs} - {j.job_id for j in before.jobs})
        == 1
    )


def test_plan_json_shows_path_sha_and_size_and_the_table_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image(tmp_path / "in.png", (5, 5, 5))
    path = flux(tmp_path, "{local: in.png}")
    facts = read_facts(tmp_path / "in.png")
    assert main(["plan", str(path), "--json"]) == 0
    stdout = capsys.readouterr().out
    line = json.loads(stdout.splitlines()[0])
    assert line["inputs"]["image_url"] == {
        "local": "in.png",
        "sha256": facts.sha256,
        "bytes": facts.size,
    }
    assert "data:" not in stdout
    single = write(
        tmp_path,
        f"""\
        version: 1
        matrix:
          image_url: [{{local: in.png}}, https://x.runcomfy.net/b.png]
        models:
          - id: {FLUX}
            inputs: {{prompt: p}}
        """,
        name="two.yaml",
    )
    assert main(["plan", str(single)]) == 0
    table = capsys.readouterr().out
    assert "in.png" in table and "sha256" not in table


# ---- problems: exit 2, the manifest line, the file, the fix ------------------------------


def test_a_missing_file_a_folder_and_a_fifo_are_refused_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    for name, words in (
        ("nowhere.png", "file not found"),
        ("folder.png", "not a regular file"),
        ("pipe.png", "not a regular file"),
        ("dangling.png", "file not found"),
    ):
        text = problems(flux(tmp_path, f"{{local: {name}}}"))
        assert "$.models[0].inputs.image_url.local" in text, text
        assert "(line 6)" in text and words in text and name in text, text
        assert "fix the path" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = write_image(tmp_path / "secret.png", (1, 1, 1))
    path.chmod(0)
    text = problems(flux(tmp_path, "{local: secret.png}"))
    assert "cannot read" in text and "secret.png" in text and "(line 6)" in text


def test_a_file_outside_the_manifest_folder_needs_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "outside.png", (1, 1, 1))
    inner = tmp_path / "inner"
    inner.mkdir()
    path = flux(inner, "{local: ../outside.png}")
    text = problems(path)
    assert "outside the manifest's folder" in text and "BATCHRUN_ALLOW_OUTSIDE_SOURCES" in text
    monkeypatch.setenv("BATCHRUN_ALLOW_OUTSIDE_SOURCES", "1")
    assert build_plan(path).jobs[0].inputs["image_url"]["local"] == "../outside.png"


def test_a_glob_matching_nothing_and_a_glob_in_fixed_inputs(tmp_path: Path) -> None:
    text = problems(
        write(
            tmp_path,
            f"""\
            version: 1
            matrix:
              image_url: {{glob: "photos/*.png"}}
            models:
              - id: {FLUX}
                inputs: {{prompt: p}}
            """,
        )
    )
    assert "$.matrix.image_url.glob" in text and "matches no file" in text and "(line 3)" in text
    write_image(tmp_path / "a.png", (1, 1, 1))
    text = problems(flux(tmp_path, '{glob: "*.png"}'))
    assert "$.models[0].inputs.image_url.glob" in text and "{local: PATH}" in text


def test_a_file_that_is_no_media_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("just text")
    text = problems(flux(tmp_path, "{local: notes.png}"))
    assert "notes.png is not an image, video or audio file" in text and "(line 6)" in text


def test_a_local_file_in_a_field_that_takes_no_media_url(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (1, 1, 1))
    path = write(
        tmp_path,
        f"""\
        version: 1
        models:
          - id: {FLUX}
            inputs:
              prompt: {{local: a.png}}
              image_url: https://x.runcomfy.net/in.png
        """,
    )
    text = problems(path)
    assert "$.models[0].inputs.prompt" in text and "(line 5)" in text
    assert "a.png: 'prompt' takes no media URL" in text and "image_uri" in text


def _video_model(folder: Path) -> None:
    """A model taking a video (format video_uri), its schema beside the manifest."""
    schema = {
        "model_id": "acme/restyle/video",
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "video_url": {"type": "string", "format": "video_uri"},
        },
        "required": ["video_url"],
    }
    models = folder / "schemas" / "models"
    models.mkdir(parents=True)
    (models / "acme__restyle__video.json").write_text(json.dumps(schema))


def test_a_file_whose_type_does_not_match_the_field(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.png")  # named like an image, a video by its bytes
    text = problems(flux(tmp_path, "{local: clip.png}"))
    assert "clip.png is a video file (video/mp4, by its content)" in text
    assert "'image_url' takes an image (image_uri)" in text and "(line 6)" in text


def test_a_video_with_no_bucket_then_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _video_model(tmp_path)
    write_video(tmp_path / "clip.mp4")
    body = """\
        version: 1
        models:
          - id: acme/restyle/video
            inputs:
              prompt: noir
              video_url: {local: clip.mp4}
        """
    text = problems(write(tmp_path, body))
    assert "$.models[0].inputs.video_url" in text and "(line 6)" in text
    assert "clip.mp4: a video file (video/mp4) cannot be sent inline" in text
    assert "uploads: {to: s3://BUCKET/PREFIX}" in text and "runcomfy-batchrun[s3]" in text
    bucket = body + "uploads: {to: s3://my-bucket/inputs, expires: 30m}\n"
    plan = build_plan(write(tmp_path, bucket))
    assert [r.way for r in delivery.routes(plan.jobs[0].inputs, plan.manifest.uploads)] == [
        delivery.BUCKET
    ]
    warned = [w for w in plan.warnings if "$.uploads.expires" in w]
    assert warned and "less than run.job_timeout + 1h" in warned[0]
    # Named, but boto3 missing: validate exits 2 saying how to install it.
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependencyError, match=r"runcomfy-batchrun\[s3\]"):
        check_ready(plan.manifest.uploads, plan.manifest.has_local)
    assert main(["validate", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err
    assert "$.uploads.to" in err and "runcomfy-batchrun[s3]" in err


def test_an_image_over_6_mib_needs_a_bucket(tmp_path: Path) -> None:
    write_big_image(tmp_path / "big.png", 6 * MIB + 1)
    write_big_image(tmp_path / "edge.png", 6 * MIB)
    text = problems(flux(tmp_path, "{local: big.png}"))
    assert "big.png: an image of 6.0 MiB cannot be sent inline (at most 6 MiB)" in text
    assert "shrink it, or add `uploads:" in text and "(line 6)" in text
    assert build_plan(flux(tmp_path, "{local: edge.png}")).jobs  # exactly 6 MiB: inline


def test_inline_images_past_64_mib_in_one_request_need_a_bucket(tmp_path: Path) -> None:
    names = [f"p{i}.png" for i in range(9)]  # 9 x 5.5 MiB, 66 MiB as base64 and more
    for name in names:
        write_big_image(tmp_path / name, int(5.5 * MIB))
    items = ", ".join(f"{{local: {n}}}" for n in names)
    body = f"""\
        version: 1
        models:
          - id: {NANO_EDIT}
            inputs:
              prompt: all of them
              image_urls: [{items}]
        """
    text = problems(write(tmp_path, body))
    assert "past the 64 MiB a request may be" in text and "(line 6)" in text
    plan = build_plan(write(tmp_path, body + "uploads: {to: s3://my-bucket/in}\n"))
    ways = [r.way for r in delivery.routes(plan.jobs[0].inputs, plan.manifest.uploads)]
    assert ways.count(delivery.INLINE) == 8 and ways.count(delivery.BUCKET) == 1
    never = build_plan(write(tmp_path, body + "uploads: {to: s3://my-bucket/in, inline: never}\n"))
    ways = [r.way for r in delivery.routes(never.jobs[0].inputs, never.manifest.uploads)]
    assert ways == [delivery.BUCKET] * 9


def test_the_uploads_block_is_checked(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (1, 1, 1))
    text = problems(flux(tmp_path, "{local: a.png}", "uploads: {to: my-bucket, inline: sometimes}"))
    assert "$.uploads.to" in text and "$.uploads.inline" in text
    text = problems(
        flux(tmp_path, "{local: a.png}", "uploads: {to: s3://my-bucket, expires: 200h}")
    )
    assert "$.uploads.expires" in text and "168h" in text


def test_validate_exits_2_naming_file_line_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_video(tmp_path / "clip.webm")
    path = flux(tmp_path, "{local: clip.webm}")
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"{path}: $.models[0].inputs.image_url" in err
    assert "clip.webm" in err and "(line 6)" in err
    assert "Traceback" not in out + err
