"""The LLM prompt source against a real HTTP server on loopback that speaks the chat-completions API (`chat_server`):
good replies become validated, reviewable and exportable pairs; replies that are not JSON are asked again, then
skipped and counted; a perturbation that breaks the wrong relation is rejected; timeouts are counted, never a
crash; a rerun is answered from the cache without one request; an unreachable endpoint fails before any work; and
`python -m data_synthesis build --prompt-source llm --generator tiny=DIR` end to end with a tiny diffusers
pipeline."""

from __future__ import annotations

import json
import re
import socket
import time

import pandas as pd
import pytest
from PIL import Image

from data_synthesis.__main__ import main
from data_synthesis.build import BuildConfig, ImageRequest, WeightedGenerator, build
from data_synthesis.llm_source import LLMPromptSource, ScenePlan, parse_perturbation, parse_scene
from data_synthesis.relations import KINDS, Relation
from data_synthesis.review import ReviewStore, export_reviewed
from data_synthesis.review.app import load_review_pairs
from data_synthesis.review.store import perfect_side
from shared.chat import ChatClient, ChatConfig, ChatError
from shared.io import stable_seed
from tests.chat_server import request_text, serve_chat

KEY_ENV, KEY = "SPATIALSCORE_TEST_LLM_KEY", "sk-llm-test-secret"
CONFIG = BuildConfig(num_pairs=4, seed=0, resolution=64, min_objects=4, max_objects=4, max_broken=2)


class SceneWriter:
    """Answers the two templates the way they ask, from what each request says (colours, background, number of
    relations; the relations to break). Scene ids in `bad_json` always get prose for a scene, in `bad_json_once`
    prose at temperature 0 only (a retry is warmer), in `wrong_break` the relation after the one asked is broken,
    in `slow` the reply comes after `delay` seconds."""

    def __init__(self) -> None:
        self.bad_json: set[str] = set()
        self.bad_json_once: set[str] = set()
        self.wrong_break: set[str] = set()
        self.slow: set[str] = set()
        self.delay = 1.5

    def __call__(self, request: dict) -> str:
        text = request_text(request)
        if text == "Reply with OK.":
            return "OK"
        scene_id = re.search(r"scene id (\S+)\)", text).group(1)
        if scene_id in self.slow:
            time.sleep(self.delay)
        if "Invent one scene" not in text:
            return self.perturb(text, scene_id)
        if scene_id in self.bad_json or (scene_id in self.bad_json_once and request["temperature"] == 0):
            return "Here is a lovely scene with a red square and a blue circle."
        return self.scene(text, scene_id)

    @staticmethod
    def prompt(scene_id: str, colours: list[str], relations: list[dict]) -> str:
        intro = f"Scene {scene_id} shows " + ", ".join(f"a small {colour} square" for colour in colours) + "."
        said = [
            f" The {r['subjects'][0]} square is {r['kind'].replace('_', ' ')} the {r['subjects'][1]} square."
            for r in relations
        ]
        return intro + "".join(said)

    def scene(self, text: str, scene_id: str) -> str:
        colours = re.search(r"Colours to use \(each exactly once\): (.+)", text).group(1).split(", ")
        background = re.search(r"Background: (\w+)", text).group(1)
        count = int(re.search(r"State (\d+) spatial relations", text).group(1))
        pairs = [(a, b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
        relations = [{"kind": kind, "subjects": [a, b]} for kind in ("left_of", "above") for a, b in pairs][:count]
        scene = {
            "background": background,
            "objects": [{"colour": colour, "shape": "square", "size": "small"} for colour in colours],
            "relations": relations,
            "prompt": self.prompt(scene_id, colours, relations),
        }
        return "```json\n" + json.dumps(scene) + "\n```"

    def perturb(self, text: str, scene_id: str) -> str:
        shown, _ = json.JSONDecoder().raw_decode(text[text.index("its prompt:\n") + len("its prompt:\n") :])
        broken = json.loads(re.search(r"Break exactly the relations (\[[^\]]*\])", text).group(1))
        relations = [shown["relations"][str(i)] for i in range(len(shown["relations"]))]
        flipped = [(i + 1) % len(relations) for i in broken] if scene_id in self.wrong_break else broken
        for i in flipped:
            relations[i] = {**relations[i], "kind": KINDS[relations[i]["kind"]][1]}
        colours = [o["colour"] for o in shown["objects"]]
        return json.dumps(
            {"relations": relations, "broken": broken, "prompt": self.prompt(scene_id, colours, relations)}
        )


class FlatColours:
    """An `ImageGenerator` that paints each image one colour drawn from its prompt and seed (these tests are about
    the prompts; the diffusers backend has its own tests)."""

    name, exact, batch_size = "flat", False, 8

    def arguments(self) -> dict:
        return {"name": self.name}

    def generate(self, requests: list[ImageRequest]) -> list[Image.Image]:
        colours = [stable_seed(r.prompt, r.seed).to_bytes(8, "little")[:3] for r in requests]
        return [
            Image.new("RGB", (r.resolution, r.resolution), tuple(c)) for r, c in zip(requests, colours, strict=True)
        ]

    def close(self) -> None:
        pass


@pytest.fixture
def writer():
    return SceneWriter()


@pytest.fixture
def server(writer):
    with serve_chat(writer, api_key=KEY) as server:
        yield server


def chat_config(server_url: str, tmp_path, **overrides) -> ChatConfig:
    options = dict(
        base_url=server_url,
        model="writer",
        api_key_env=KEY_ENV,
        timeout_s=5.0,
        max_retries=0,
        max_concurrency=4,
        parse_retries=1,
        cache_path=str(tmp_path / "llm.sqlite"),
    )
    return ChatConfig(**{**options, **overrides})


def build_with_llm(config: ChatConfig, out, build_config: BuildConfig = CONFIG):
    client = ChatClient(config)
    try:
        return build(
            build_config,
            out,
            progress=False,
            prompt_source=LLMPromptSource(client),
            generators=[WeightedGenerator(FlatColours())],
        )
    finally:
        client.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def test_good_replies_become_validated_reviewable_exportable_pairs_and_a_rerun_asks_nothing(server, tmp_path):
    result = build_with_llm(chat_config(server.url, tmp_path), tmp_path / "ds")
    frame = pd.read_parquet(tmp_path / "ds" / "pairs.parquet")
    assert len(frame) == 4 and result.counts["skipped"] == {}
    assert set(frame["review_status"]) == {"unreviewed"} and set(frame["generator"]) == {"flat"}
    for row in frame.itertuples():
        stated = [Relation.from_dict(r) for r in json.loads(row.stated_relations)]
        perturbed = [Relation.from_dict(r) for r in json.loads(row.perturbed_relations)]
        broken = json.loads(row.broken_relations)
        assert len(broken) == row.num_broken and 1 <= row.num_broken <= 2 and row.num_objects == 4
        assert [p == s.opposite() for s, p in zip(stated, perturbed, strict=True)] == [
            i in broken for i in range(len(stated))
        ]
        assert row.prompt != row.perturbed_prompt and row.pair_id.startswith("llm-0-")
    calls = len(server.calls)
    assert calls == 1 + 2 * 4  # the preflight, then one scene and one perturbation per pair
    assert result.usage["requests"] == 8 and result.usage["prompt_tokens"] == 8 * 7
    log = json.loads((tmp_path / "ds" / "build_log.json").read_text())
    assert log["prompt_source_usage"]["completion_tokens"] == 8 * 3
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["arguments"]["prompt_source"]["model"] == "writer" and meta["generator"] == "flat"
    assert KEY not in (tmp_path / "ds" / "meta.json").read_text() + (tmp_path / "ds" / "build_args.json").read_text()

    pairs = load_review_pairs(tmp_path / "ds")  # the review app reads the dataset
    assert [p.pair_id for p in pairs] == list(frame["pair_id"]) and pairs[0].relations
    store = ReviewStore(tmp_path / "ds" / "review.sqlite")
    side = perfect_side(pairs[0].pair_id, "ann")
    store.decide(reviewer="ann", pair_id=pairs[0].pair_id, choice=side, shown_perfect_side=side)
    exported = export_reviewed(tmp_path / "ds", tmp_path / "reviewed")
    assert exported.accepted == 1 and exported.not_reviewed == 3

    rerun = build_with_llm(chat_config(server.url, tmp_path), tmp_path / "again")
    assert len(server.calls) == calls  # every reply came from the cache, and the preflight was not needed
    assert rerun.usage["cache_hits"] == 8 and rerun.usage["requests"] == 0
    assert pd.read_parquet(tmp_path / "again" / "pairs.parquet").equals(frame)


def test_malformed_json_is_asked_again_then_skipped_and_counted(server, writer, tmp_path):
    writer.bad_json = {"0-1"}
    writer.bad_json_once = {"0-2"}
    result = build_with_llm(chat_config(server.url, tmp_path), tmp_path / "ds")
    frame = pd.read_parquet(tmp_path / "ds" / "pairs.parquet")
    assert result.counts["skipped"] == {"llm_scene_invalid": 1}
    assert 1 not in set(frame["index"]) and 2 in set(frame["index"]) and len(frame) == 4
    asked = [call for call in server.calls if "scene id 0-1)" in request_text(call)]
    assert [(call["temperature"], call["seed"]) for call in asked] == [(0.0, 0), (0.7, 1)]  # a different request
    assert result.usage["parse_retries"] == 2 and result.usage["unparseable"] == 1


def test_a_perturbation_that_breaks_the_wrong_relation_is_rejected(server, writer, tmp_path):
    writer.wrong_break = {"0-0"}
    result = build_with_llm(chat_config(server.url, tmp_path), tmp_path / "ds")
    assert result.counts["skipped"] == {"llm_perturbation_invalid": 1}
    assert 0 not in set(pd.read_parquet(tmp_path / "ds" / "pairs.parquet")["index"])


def test_timeouts_are_counted_without_a_crash(server, writer, tmp_path):
    writer.slow, writer.delay = {"0-1"}, 1.5
    result = build_with_llm(chat_config(server.url, tmp_path, timeout_s=0.5), tmp_path / "ds")
    assert result.counts["skipped"] == {"llm_request_failed": 1} and result.counts["pairs"] == 4
    assert result.usage["failed"] == 1


def test_replies_are_checked_against_the_scene_schema():
    plan = ScenePlan("0-0", ("red", "blue"), ("square", "circle"), "plain", 2, 1, 0)
    good = {
        "background": "plain",
        "objects": [
            {"colour": "red", "shape": "square", "size": "small"},
            {"colour": "blue", "shape": "circle", "size": "large"},
        ],
        "relations": [{"kind": "left_of", "subjects": ["red", "blue"]}, {"kind": "above", "subjects": ["blue", "red"]}],
        "prompt": "A small red square stands to the left of a large blue circle, which is above it.",
    }
    scene = parse_scene(json.dumps(good), plan)
    assert scene.relations[0] == Relation("left_of", ("red", "blue")) and scene.scene.background.kind == "plain"
    for change, message in [
        ({"relations": [{"kind": "left_of", "subjects": ["red", "green"]}] * 2}, "not in the scene"),
        ({"relations": [{"kind": "hovering", "subjects": ["red", "blue"]}] * 2}, "unknown relation kind"),
        ({"relations": [{"kind": "in_sky", "subjects": ["red"]}, good["relations"][0]]}, "sky_ground"),
        ({"relations": [good["relations"][0], {"kind": "right_of", "subjects": ["red", "blue"]}]}, "opposites"),
        ({"objects": good["objects"][:1]}, "exactly the colours"),
        ({"prompt": "A red square and a green thing somewhere in the picture, on a plain backdrop."}, "blue"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_scene(json.dumps({**good, **change}), plan)
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_scene('{"objects": [', plan)

    flipped = [{"kind": "right_of", "subjects": ["red", "blue"]}, good["relations"][1]]
    perturbed = {"relations": flipped, "broken": [0], "prompt": "A small red square is right of a large blue circle."}
    assert parse_perturbation(json.dumps(perturbed), scene, (0,)).relations[0] == Relation("right_of", ("red", "blue"))
    for change, broken, message in [
        ({}, (1,), r"'broken' must list exactly the relations \[1\]"),  # broke 0 where 1 was asked
        ({"broken": [0, 1]}, (0,), "exactly the relations"),  # a different number than asked
        ({"relations": [flipped[0], {"kind": "below", "subjects": ["blue", "red"]}]}, (0,), r"\[1\] must be kept"),
        ({"relations": [good["relations"][0], flipped[1]]}, (0,), "replaced by their opposites"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_perturbation(json.dumps({**perturbed, **change}), scene, broken)


def test_an_unreachable_endpoint_fails_with_one_clear_error_before_any_work(tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ChatError, match="LLM prompt source: cannot reach the chat endpoint"):
        build_with_llm(chat_config(url, tmp_path, timeout_s=0.5), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    args = ["build", "--out", str(tmp_path / "ds"), "--num-pairs", "2", "--prompt-source", "llm", "--llm-base-url"]
    args += [url, "--llm-model", "writer", "--llm-api-key-env", KEY_ENV, "--llm-cache", str(tmp_path / "c.sqlite")]
    args += ["--llm-timeout", "0.5", "--llm-http-retries", "0", "--generator", f"tiny={tmp_path}", "--quiet"]
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')  # a (component-less) pipeline dir
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the chat endpoint" in err and KEY not in err


def test_cli_builds_llm_prompts_with_a_tiny_diffusers_pipeline_end_to_end(server, tiny_flux_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["build", "--out", str(out), "--num-pairs", "2", "--resolution", "64", "--min-objects", "4"]
    args += ["--max-objects", "4", "--max-broken", "2", "--prompt-source", "llm", "--llm-base-url", server.url]
    args += ["--llm-model", "writer", "--llm-api-key-env", KEY_ENV, "--llm-cache", str(tmp_path / "llm.sqlite")]
    args += ["--generator", f"tiny={tiny_flux_dir}", "--generator-steps", "2", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "LLM: 4 requests, 0 cache hits, 28 prompt + 12 completion tokens" in printed and KEY not in printed
    frame = pd.read_parquet(out / "pairs.parquet")
    assert set(frame["generator"]) == {"tiny"} and set(frame["review_status"]) == {"unreviewed"}
    image = Image.open(out / frame["perfect_image"][0])
    assert image.size == (64, 64) and len(image.getcolors(maxcolors=4096) or range(4097)) > 100  # not flat
    assert len(load_review_pairs(out)) == 2
