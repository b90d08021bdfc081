"""The batch's files: the job file read as written, the manifest read whatever it holds, the progress."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import arta
from arta.batch import Task, plan, read_jobs
from arta.batch.manifest import Manifest, RunLock


def test_only_a_newline_ends_a_prompt(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a fox\fin snow\na cat\u0085 on a mat\u2028at noon\r\n".encode())
    jobs = read_jobs(prompts)
    assert [job.prompt for job in jobs] == ["a fox\fin snow", "a cat\u0085 on a mat\u2028at noon"]
    assert [job.line for job in jobs] == [1, 2]


def test_a_byte_order_mark_does_not_hide_json_lines(tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.txt"  # not named .jsonl: the "{" must be seen
    jobs_file.write_bytes(b'\xef\xbb\xbf{"prompt": "a fox", "n": 2}\n{"prompt": "a cat"}\n')
    jobs = read_jobs(jobs_file)
    assert [job.params for job in jobs] == [{"prompt": "a fox", "n": 2}, {"prompt": "a cat"}]


def test_a_file_that_is_not_utf8_names_the_file_and_the_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a fox\na cat\nna\xefve art\n")
    with pytest.raises(arta.InvalidInputError, match=r"prompts.txt, line 3: not UTF-8 text "
                                                     r"\(byte 0xef at column 3\)"):
        read_jobs(prompts)


def test_deep_nesting_is_a_typed_error_naming_the_line(tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text('{"prompt": "a fox"}\n{"prompt": ' + "[" * 100_000 + "]" * 100_000
                         + "}\n")
    with pytest.raises(arta.InvalidInputError, match=r"jobs.jsonl, line 2: .*nested too deeply"):
        read_jobs(jobs_file)


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "a fox", "n": "2"}', "n must be int, not str"),
    ('{"prompt": "a fox", "style": 5}', "style must be str, not int"),
    ('{"prompt": "\\ud800"}', "lone surrogate"),
    ('{"prompt": "a fox", "guidance_scale": NaN}', "guidance_scale must be from 1 to 20"),
    ('["a fox"]', 'expected a JSON object with a "prompt"'),
])
def test_a_wrong_value_is_named_before_anything_is_sent(tmp_path: Path, line: str,
                                                        message: str) -> None:
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(line + "\n")
    with pytest.raises(arta.InvalidInputError, match=f"line 1: .*{message}"):
        read_jobs(jobs_file)


def test_an_append_after_a_torn_line_starts_on_a_fresh_line(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.jsonl")
    manifest.append({"job": "1:a", "line": 1, "event": "intent", "seed": 7})
    with open(manifest.path, "ab") as file:  # a disk that filled half-way through a record
        file.write(b'{"job": "2:b", "line": 2, "event": "subm')
    manifest.append({"job": "1:a", "line": 1, "event": "submitted", "record_id": "r1", "seed": 7})
    states = manifest.states()
    assert set(states) == {"1:a"}
    assert (states["1:a"].event, states["1:a"].record_id, states["1:a"].seed) == \
        ("submitted", "r1", 7)
    assert manifest.path.read_bytes().count(b"\n") == 3  # the torn line stays on its own


def test_the_plan_sends_an_unanswered_intent_again_with_its_seed(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na cat\na cow\na hen\n")
    fox, cat, cow, hen = read_jobs(prompts)
    manifest = Manifest(tmp_path / "m.jsonl")
    for job, records in ((fox, [("intent", None)]),
                         (cat, [("intent", None), ("submitted", "r-cat")]),
                         (cow, [("intent", None), ("submitted", "r-cow"), ("done", "r-cow")])):
        for event, record_id in records:
            manifest.append({"job": job.key, "line": job.line, "event": event, "seed": job.line,
                             "record_id": record_id})
    skipped, tasks = plan([fox, cat, cow, hen], manifest.states())
    assert [(o.line, o.event, o.record_id) for o in skipped] == [(3, "skipped", "r-cow")]
    assert tasks == [Task(fox, seed=1, possibly_resubmitted=True),
                     Task(cat, record_id="r-cat", seed=2), Task(hen)]
    assert tasks[0].params().seed == 1


def test_a_held_run_lock_names_its_owner(tmp_path: Path) -> None:
    with RunLock(tmp_path / "m.jsonl"):
        owner = json.loads((tmp_path / ".m.jsonl.owner").read_text())
        # filelock's lock is per process and thread: another thread stands for another run.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool, \
                pytest.raises(arta.ArtaError, match=f"pid {owner['pid']} on {owner['host']}"):
            pool.submit(RunLock(tmp_path / "m.jsonl").acquire).result()
    RunLock(tmp_path / "m.jsonl").acquire()  # released: the next run may start


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_read_jobs_takes_any_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"jobs{suffix}"
        path.write_bytes(data)
        try:
            jobs = read_jobs(path)
        except arta.ArtaError as error:
            assert str(path) in str(error)
        else:
            assert jobs and all(isinstance(job.prompt, str) for job in jobs)


_RECORD_PIECES = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["job", "event", "line", "record_id", "seed", "files", "error_type"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans(),
                  st.sampled_from(["intent", "submitted", "done", "failed"]),
                  st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=2)),
        max_size=6)),
    st.just(b"[" * 5000),
)


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(_RECORD_PIECES, max_size=8))
def test_the_manifest_reader_takes_any_bytes(pieces: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Manifest(Path(folder) / "m.jsonl")
        manifest.path.write_bytes(b"\n".join(pieces))
        try:
            states = manifest.states()
        except arta.ArtaError:
            return
        prompts = Path(folder) / "p.txt"
        prompts.write_text("a fox\n")
        plan(read_jobs(prompts), states)  # whatever survived is usable
        for state in states.values():
            assert state.record_id is None or isinstance(state.record_id, str)
