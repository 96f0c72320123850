"""``legion vectors`` and a SIGKILLed ``legion run`` whose agents write vectors: real
processes, real signals, real stores."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import legion as legion_sdk
from legion.vectors.sqlite import vectors_path
from tests.acceptance.conftest import legion, read_jsonl, start_legion, wait_for, write_jsonl

AGENTS = """
import asyncio
import os

import legion


def _record(line):
    with open(os.environ["LEDGER"], "a") as f:
        f.write(line + "\\n")


@legion.agent(timeout=120, retries=2, backoff=0)
async def note(ctx, i: int):
    col = ctx.vectors("notes", scope="shared")
    ids = await col.add([f"note {i} about topic {i % 7}", f"second note {i}"])
    await ctx.step("after-add", _record, f"{ctx.task_id}:after-add")
    if os.environ.get("HOLD") and i % 2:
        await asyncio.sleep(3600)
    hits = await col.search(f"note {i}", k=3)
    return {"i": i, "ids": ids, "hits": len(hits)}
"""

DOCS = [
    {
        "id": f"d{n}",
        "text": f"Document {n} talks about {topic}.\n\nIt has a second paragraph.",
        "topic": topic,
    }
    for n, topic in enumerate(["asyncio", "sqlite", "postgresql", "vectors", "rate limits"] * 2)
]


def test_load_is_resumable_and_search_and_list_show_it(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    half = write_jsonl(tmp_path / "half.jsonl", DOCS[:5])
    full = write_jsonl(tmp_path / "full.jsonl", [*DOCS, "a bare string is a text too"])
    first = legion("vectors", "load", "kb", "--input", str(half), "--store", store)
    assert first.returncode == 0, first.stderr
    assert "5 documents, 5 chunks (5 embedded, 0 already loaded)" in first.stdout
    again = legion("vectors", "load", "kb", "--input", str(full), "--store", store)
    assert again.returncode == 0, again.stderr
    assert "11 documents, 11 chunks (6 embedded, 5 already loaded)" in again.stdout

    listed = legion("vectors", "list", "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r for r in map(json.loads, listed.stdout.splitlines())] == [
        {"name": "kb", "scope": "shared", "model": "sim-model", "dims": 384, "items": 11}
    ]
    found = legion(
        "vectors",
        "search",
        "kb",
        "sqlite",
        "-k",
        "3",
        "--where",
        "topic=sqlite",
        "--store",
        store,
        "--json",
    )
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert {h["id"] for h in hits} == {"d1#0", "d6#0"}
    assert all(h["metadata"]["topic"] == "sqlite" for h in hits)

    missing = legion("vectors", "search", "nope", "x", "--store", store)
    assert missing.returncode == 2 and "no vector collection 'nope'" in missing.stderr
    empty = legion("vectors", "search", "kb", " ", "--store", store)
    assert empty.returncode == 2 and empty.stderr.startswith("error: the query is empty")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"no_text": 1}])
    broken = legion("vectors", "load", "kb", "--input", str(bad), "--store", store)
    assert broken.returncode == 1 and "bad.jsonl:1" in broken.stderr


def test_load_reads_a_byte_order_mark_and_reports_a_line_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(
        b"\xef\xbb\xbf"  # as editors on Windows save UTF-8
        + b'{"id": "first", "text": "The first line follows the mark."}\n'
        + b'{"id": "latin", "text": "caf\xe9 in Latin-1"}\n'
        + b'{"id": "last", "text": "The last line is fine."}\n'
    )
    loaded = legion("vectors", "load", "kb", "--input", str(corpus), "--store", store)
    assert loaded.returncode == 1, loaded.stderr  # one bad line, reported; the rest loaded
    assert "Traceback" not in loaded.stderr, loaded.stderr
    assert "corpus.jsonl:2: 'utf-8' codec can't decode" in loaded.stderr, loaded.stderr
    assert "corpus.jsonl:1" not in loaded.stderr, loaded.stderr
    assert "2 documents, 2 chunks (2 embedded, 0 already loaded)" in loaded.stdout
    found = legion("vectors", "search", "kb", "first line", "--store", store, "--json")
    assert found.returncode == 0, found.stderr
    assert {json.loads(line)["id"] for line in found.stdout.splitlines()} == {
        "first#0",
        "last#0",
    }


def test_load_skips_a_line_no_store_can_keep_and_loads_the_rest(tmp_path: Path) -> None:
    # A lone surrogate crashed the load with a traceback; NaN or an integer past 64 bits
    # in a line's metadata stopped it, unnamed, after its batch was embedded.
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"id": "a", "text": "the first document"}\n'
        '{"text": "lone \\ud800 surrogate"}\n'
        '{"id": "b", "text": "rated", "rating": NaN}\n'
        '{"id": "c", "text": "big", "n": 1180591620717411303424}\n'
        '{"id": "e", "text": "nul \\u0000 inside"}\n'
        '{"id": "d", "text": "the last document"}\n'
    )
    loaded = legion("vectors", "load", "kb", "--input", str(corpus), "--store", store)
    assert loaded.returncode == 1, loaded.stderr
    assert "Traceback" not in loaded.stderr, loaded.stderr
    for line in (2, 3, 4):
        assert f"corpus.jsonl:{line}: not JSON" in loaded.stderr, loaded.stderr
    assert "corpus.jsonl:5: its text, id or metadata holds a NUL character" in loaded.stderr
    assert "2 documents, 2 chunks (2 embedded, 0 already loaded)" in loaded.stdout


def test_load_skips_and_reports_a_repeated_id_and_legions_own_keys(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "d1", "text": "alpha beta gamma"},
            {"id": "d1", "text": "delta epsilon"},  # the same id: would replace line 1's
            {"id": 0, "text": "an id of zero is an id"},
            {"text": "mine", "doc": "my own doc key"},  # legion writes doc and chunk
            {"text": "* * *"},  # symbols alone: a direction of their own
        ],
    )
    loaded = legion("vectors", "load", "kb", "--input", str(corpus), "--store", store)
    assert loaded.returncode == 1, loaded.stderr
    assert "Traceback" not in loaded.stderr, loaded.stderr
    assert "corpus.jsonl:2: id 'd1' is the id of line 1 too" in loaded.stderr, loaded.stderr
    assert "corpus.jsonl:4: 'doc': legion's own metadata keys" in loaded.stderr, loaded.stderr
    assert "3 documents, 3 chunks (3 embedded, 0 already loaded)" in loaded.stdout
    found = legion("vectors", "search", "kb", "alpha", "--store", store, "--json", "-k", "5")
    assert found.returncode == 0, found.stderr
    hits = {json.loads(line)["id"]: json.loads(line)["text"] for line in found.stdout.splitlines()}
    assert hits["d1#0"] == "alpha beta gamma"  # the first line's text, kept
    assert set(hits) == {"d1#0", "0#0", next(i for i in hits if i not in ("d1#0", "0#0"))}
    assert len(hits) == 3
    sessioned = legion("vectors", "search", "kb", "alpha", "--store", store, "--session", "s1")
    assert sessioned.returncode == 2, sessioned.stderr
    assert sessioned.stderr.startswith("error: 'kb' is shared: its items belong to no session")


def test_a_reload_embeds_edited_documents_anew_and_drops_a_shortened_ones_tail(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    three = (
        "The first part, which is about cats.\n\nThe second part, which is about dogs."
        "\n\nThe third part, which is about birds."
    )
    before = [
        {"id": "pets", "text": three},
        {"id": "same", "text": "A document nobody edits."},
        {"id": "edited", "text": "The old text about cats."},
        {"id": "gone", "text": "A document whose text is emptied."},
        {"id": "tagged", "text": "A document whose tags change.", "kind": "old"},
    ]
    after = [
        {"id": "pets", "text": "The first part, which is about cats."},  # two chunks go
        {"id": "same", "text": "A document nobody edits."},
        {"id": "edited", "text": "The new text about dogs."},
        {"id": "gone", "text": "   "},  # its chunk goes too (it stayed, searchable)
        {"id": "tagged", "text": "A document whose tags change.", "kind": "new"},
    ]
    chunked = ("--chunk-chars", "50")  # (a paragraph a chunk)
    a, b = write_jsonl(tmp_path / "a.jsonl", before), write_jsonl(tmp_path / "b.jsonl", after)
    first = legion("vectors", "load", "kb", "--input", str(a), "--store", store, *chunked)
    assert first.returncode == 0, first.stderr
    assert "5 documents, 7 chunks (7 embedded, 0 already loaded)" in first.stdout
    second = legion("vectors", "load", "kb", "--input", str(b), "--store", store, *chunked)
    assert second.returncode == 0, second.stderr
    assert (
        "5 documents, 4 chunks (1 embedded (1 anew: edited since), 3 already loaded, "
        "3 deleted (past a shortened document's end), 1 with new metadata, 1 without text "
        "(nothing kept of them))"
    ) in second.stdout, second.stdout
    found = legion("vectors", "search", "kb", "dogs", "--store", store, "--json", "-k", "10")
    assert found.returncode == 0, found.stderr
    hits = {json.loads(line)["id"]: json.loads(line)["text"] for line in found.stdout.splitlines()}
    assert hits == {
        "pets#0": "The first part, which is about cats.",
        "same#0": "A document nobody edits.",
        "edited#0": "The new text about dogs.",
        "tagged#0": "A document whose tags change.",
    }
    # Metadata alone changed: written anew (the old was kept, and --where found nothing).
    found = legion(
        "vectors", "search", "kb", "tags", "--store", store, "--json", "--where", "kind=new"
    )
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == ["tagged#0"]


def test_a_reload_counts_every_deleted_chunk_whatever_its_concurrency(tmp_path: Path) -> None:
    # Batches loaded at once each added their deletions to the count read before their
    # own await: "24 deleted" where 80 went, a number that changed from run to run.
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    three = (
        "The first part, which is about {n}.\n\nThe second part, which is about {n}."
        "\n\nThe third part, which is about {n}."
    )
    before = [{"id": f"d{n}", "text": three.format(n=n)} for n in range(40)]
    after = [{"id": f"d{n}", "text": f"The first part, which is about {n}."} for n in range(40)]
    a, b = write_jsonl(tmp_path / "a.jsonl", before), write_jsonl(tmp_path / "b.jsonl", after)
    opts = ("--store", store, "--chunk-chars", "50", "--batch", "1", "--concurrency", "8")
    first = legion("vectors", "load", "kb", "--input", str(a), *opts)
    assert first.returncode == 0, first.stderr
    assert "40 documents, 120 chunks" in first.stdout, first.stdout
    second = legion("vectors", "load", "kb", "--input", str(b), *opts)
    assert second.returncode == 0, second.stderr
    assert "80 deleted (past a shortened document's end)" in second.stdout, second.stdout


def test_a_load_that_cannot_start_creates_no_store(tmp_path: Path) -> None:
    store = tmp_path / "kb.db"
    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS[:1])
    for collection, given, why in (
        ("kb", tmp_path / "typo.jsonl", "cannot read"),
        ("kb", tmp_path, "cannot read"),
        ("bad name", corpus, "bad collection name 'bad name'"),
    ):
        r = legion(
            "vectors", "load", collection, "--input", str(given), "--store", f"sqlite:///{store}"
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: {why}"), r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]
    keyless = {"OPENAI_API_KEY": ""}
    r = legion(
        *("vectors", "load", "kb", "--input", str(corpus), "--store", f"sqlite:///{store}"),
        *("--llm", "openai:text-embedding-3-small"),
        env=keyless,
    )
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # (it made one)


def test_a_batch_too_large_for_the_provider_says_to_lower_batch(tmp_path: Path) -> None:
    # "Requested 840, over the 120 one window of 60 s admits", and no word of --batch.
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"text": f"document {i} " + "word " * 30} for i in range(20)]
    )
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    args = ("vectors", "load", "kb", "--input", str(corpus), "--store", store, "--tpm", "120")
    r = legion(*args, "--batch", "20")
    assert r.returncode == 2, r.stderr
    assert "a batch of 20 chunks: a lower --batch sends fewer at once" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_where_takes_nan_and_infinity_as_the_text_they_are(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    docs = [
        {"id": "nan", "text": "a reading that is not a number", "code": "NaN"},
        {"id": "inf", "text": "a reading past the scale", "code": "Infinity"},
        {"id": "one", "text": "a reading of one", "code": 1},
    ]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    assert legion("vectors", "load", "kb", "--input", str(corpus), "--store", store).returncode == 0
    for where, found in (("code=NaN", "nan#0"), ("code=Infinity", "inf#0"), ("code=1", "one#0")):
        r = legion(
            "vectors", "search", "kb", "reading", "--where", where, "--store", store, "--json"
        )
        assert r.returncode == 0, r.stderr
        assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [found], where


def _recorded(store: str) -> tuple[set[str], int]:
    """Steps recorded so far ("task:key") and the vectors stored, read from the store."""
    if store.startswith("sqlite"):
        path = store.removeprefix("sqlite:///")
        db = sqlite3.connect(path)
        steps = {f"{t}:{k}" for t, k in db.execute("SELECT task_id, key FROM steps")}
        db.close()
        db = sqlite3.connect(vectors_path(path))
        try:
            count = db.execute("SELECT count(*) FROM vector_items").fetchone()[0]
        except sqlite3.OperationalError:
            count = 0
        db.close()
        return steps, count
    import psycopg

    with psycopg.connect(store.replace("&pool_max_size=4", "")) as conn:
        steps = {f"{t}:{k}" for t, k in conn.execute("SELECT task_id, key FROM steps")}
        row = conn.execute("SELECT id FROM vector_collections WHERE name = 'notes'").fetchone()
        count = 0
        if row is not None:
            found = conn.execute(f"SELECT count(*) FROM vector_items_{row[0]}").fetchone()
            assert found is not None
            count = found[0]
        return steps, count


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_mid_run_then_rerun_stores_every_vector_once(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    n = 40
    store = (
        f"sqlite:///{tmp_path / 'runs.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("pgvector_url")
    )
    app = tmp_path / "agents.py"
    app.write_text(AGENTS)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    args = [
        "run",
        f"{app}:note",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        store,
        "-c",
        "50",
        "--lease-seconds",
        "600",
    ]

    proc = start_legion(*args, env={"LEDGER": str(log1), "HOLD": "1"})

    def past_add() -> set[str]:  # the tasks whose add returned (a task may log twice)
        return set(log1.read_text().splitlines()) if log1.exists() else set()

    wait_for(lambda: len(past_add()) >= n // 2, what="half the tasks past their add")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    recorded, stored = _recorded(store)
    # Each add is durable when it returns: two vectors for every task that got past it.
    assert stored >= 2 * len(past_add()), "the first run's adds should all be stored"

    second = legion(*args, env={"LEDGER": str(log2)})
    assert second.returncode == 0, second.stderr
    rows = read_jsonl(out)
    assert len(rows) == n and all(r["status"] == "succeeded" for r in rows), rows
    ids = [i for r in rows for i in r["output"]["ids"]]
    assert len(ids) == 2 * n and len(set(ids)) == 2 * n
    _, stored = _recorded(store)
    assert stored == 2 * n  # every vector once: none lost, none added twice
    rerun = set(log2.read_text().splitlines()) if log2.exists() else set()
    assert not recorded & rerun, "a step recorded before the kill ran again"
    ledger = Counter([*log1.read_text().splitlines(), *rerun])
    assert len(ledger) == n  # every task got past its add


def test_the_example_agent_retrieves_by_vectors_and_remembers_its_session(
    tmp_path: Path,
) -> None:
    example = Path(__file__).parents[2] / "examples" / "research_vectors.py"
    store = f"sqlite:///{tmp_path / 'research.db'}"
    corpus = tmp_path / "pydoc.jsonl"
    made = subprocess.run(
        [sys.executable, str(example), str(corpus)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    lines = corpus.read_text().splitlines()
    again = subprocess.run([sys.executable, str(example), str(corpus)], capture_output=True)
    assert again.returncode == 0, again.stderr  # its own corpus: written again
    notes = tmp_path / "notes.txt"  # a user's file given by mistake: kept
    notes.write_text("my notes\n")
    refused = subprocess.run(
        [sys.executable, str(example), str(notes)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1 and "is not a corpus" in refused.stderr
    assert notes.read_text() == "my notes\n"
    small = tmp_path / "small.jsonl"
    small.write_text(
        "".join(f"{line}\n" for line in lines if '"with"' in line or '"yield"' in line)
    )
    loaded = legion("vectors", "load", "pydoc", "--input", str(small), "--store", store)
    assert loaded.returncode == 0, loaded.stderr
    questions = [
        {"question": "How does the with statement call __exit__?", "_session": "ann"},
        {"question": "What does yield do in a generator?", "_session": "bob"},
        {
            "question": "Does the with statement call __exit__ after an exception?",
            "_session": "ann",
        },
    ]
    inp = write_jsonl(tmp_path / "q.jsonl", questions)
    out = tmp_path / "answers.jsonl"
    run = legion(
        "run", f"{example}:research", "-i", str(inp), "-o", str(out), "--store", store, "-c", "1"
    )
    assert run.returncode == 0, run.stderr
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert rows[0]["output"]["sources"][0] == "with"
    assert rows[1]["output"]["sources"][0] == "yield"
    assert rows[0]["output"]["related_earlier"] == []
    assert rows[1]["output"]["related_earlier"] == []  # another session's questions stay there
    assert rows[2]["output"]["related_earlier"] == [questions[0]["question"]]
    assert "async pitfalls" not in run.stderr, run.stderr  # the example is as it should be


def test_a_load_of_no_document_says_no_collection_was_made(tmp_path: Path) -> None:
    # It answered "0 documents" and exit 0; a search then found no such collection.
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    loaded = legion("vectors", "load", "kb", "--input", str(empty), "--store", store)
    assert loaded.returncode == 0, loaded.stderr
    assert "collection 'kb' was not made" in loaded.stderr, loaded.stderr


def test_drop_says_what_would_go_then_deletes_with_yes(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'kb.db'}"
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS[:3])
    assert legion("vectors", "load", "kb", "--input", str(corpus), "--store", store).returncode == 0
    asked = legion("vectors", "drop", "kb", "--store", store)
    assert asked.returncode == 1
    assert asked.stdout.strip() == "would delete 'kb' (shared, 3 items): add --yes to delete it"
    done = legion("vectors", "drop", "kb", "--yes", "--store", store)
    assert done.returncode == 0 and done.stdout.strip() == "deleted 'kb' (shared, 3 items)"
    listed = legion("vectors", "list", "--store", store)
    assert "no vector collections" in listed.stdout
    again = legion("vectors", "drop", "kb", "--yes", "--store", store)
    assert again.returncode == 2 and "no vector collection 'kb'" in again.stderr


@legion_sdk.agent(retries=0)
async def remember(ctx: legion_sdk.Context, text: str) -> None:
    await ctx.vectors("notes").add([text])


def test_search_finds_a_tenants_session_with_tenant(tmp_path: Path) -> None:
    # Sessions of tasks submitted with an API key are kept under their tenant's name:
    # `--session alice` said "no hits" for tenant acme's session alice, which held them.
    store = f"sqlite:///{tmp_path / 'kb.db'}"

    async def submit() -> None:
        async with legion_sdk.Runtime(store, llm="sim") as rt:
            task = await rt.submit(remember, "alpha beta", session="alice", tenant="acme")
            assert (await rt.result(task)).ok

    asyncio.run(submit())
    plain = legion("vectors", "search", "notes", "alpha", "--store", store, "--session", "alice")
    assert plain.returncode == 0 and "no hits" in plain.stdout, plain.stderr
    found = legion(
        "vectors", "search", "notes", "alpha", "--store", store, "--session", "alice",
        "--tenant", "acme", "--json",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["text"] for line in found.stdout.splitlines()] == ["alpha beta"]
