"""Text generation on a real gateway process, through the official ``openai`` client.

Gateway A (a process) serves random-weights models registered as ``backend: llm`` versions;
gateway B (uvicorn in this process) serves versions that forward to A: ``backend: openai``
(Roost standing in for vLLM) and ``backend: triton`` (A's generate extension standing in for
Triton's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from roost_testing import GatewayProcess, deploy_model, running_gateway

from llm.config import ModelConfig
from registry import Registry, RoostSettings, State
from registry.traffic_ops import set_shadow
from warehouse import run_query

MakeLM = Callable[..., bytes]
FAST = {"ROOST_LOG_FLUSH_INTERVAL_S": "0.2", "ROOST_DEV_MODE": "true"}


@dataclass
class Gateways:
    a: GatewayProcess
    b: str
    settings_a: RoostSettings
    settings_b: RoostSettings

    def client(self, which: str = "a", **kw: Any) -> openai.OpenAI:
        url = self.a.url if which == "a" else self.b
        return openai.OpenAI(base_url=url + "/v1", api_key="unused", **kw)


def _validated(registry: Registry, model: str, data: bytes, config: dict[str, Any]) -> int:
    info = registry.register_version(model, data, config=config)
    registry.transition(model, info.version, State.VALIDATING, reason="test")
    registry.transition(model, info.version, State.VALIDATED, reason="test")
    return int(info.version)


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, make_lm: MakeLM, long_config: ModelConfig
) -> Iterator[Gateways]:
    home_a = tmp_path_factory.mktemp("a") / "roost"
    home_b = tmp_path_factory.mktemp("b") / "roost"
    settings_a = RoostSettings(home=home_a)
    settings_b = RoostSettings(home=home_b, log_flush_interval_s=0.2, dev_mode=True)
    llm = {"backend": "llm"}
    a = GatewayProcess(Path(home_a), env=FAST, grpc=False, name="llm-a")
    reg = Registry.from_settings(settings_a)
    try:
        deploy_model(reg, "lm", make_lm(0), config={**llm, "max_num_seqs": 4})
        deploy_model(reg, "slow", make_lm(0, long_config),
                     config={**llm, "max_num_seqs": 2, "max_queue_size": 1})
        deploy_model(reg, "ab", make_lm(1), config=llm)
        reg.start_canary("ab", _validated(reg, "ab", make_lm(2), llm), 50)
        set_shadow(reg, "ab", _validated(reg, "ab", make_lm(3), llm), 100)
    finally:
        reg.close()
    reg = Registry.from_settings(settings_b)
    try:
        deploy_model(reg, "proxy", make_lm(0), config={
            "backend": "openai", "upstream_url": f"{a.url}/v1", "upstream_model": "lm"})
        deploy_model(reg, "tproxy", make_lm(0), config={
            "backend": "triton", "triton_url": f"127.0.0.1:{a.port}", "triton_model": "lm",
            "warmup_runs": 0})  # the remote has no tensor interface to warm up
    finally:
        reg.close()
    a.start()
    try:
        a.wait_ready()
        with running_gateway(settings_b) as b:
            yield Gateways(a, b, settings_a, settings_b)
    except Exception as exc:
        exc.add_note(f"gateway A log:\n{a.tail()}")
        raise
    finally:
        a.stop()


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def query_until(settings: RoostSettings, sql: str, done: Callable[[list], bool]) -> list:
    deadline = time.monotonic() + 15
    while True:
        _, rows = run_query(settings.logs_dir, sql)
        if done(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


# -- the OpenAI API through the official client ------------------------------------------------


def test_completions_and_chat_with_the_openai_client(gateways: Gateways) -> None:
    client = gateways.client()
    plain = client.completions.create(model="lm", prompt="Hello", max_tokens=8, seed=3)
    assert plain.object == "text_completion" and plain.model == "lm"
    assert plain.choices[0].finish_reason in ("length", "stop")
    assert plain.usage is not None and plain.usage.completion_tokens <= 8
    assert plain.usage.prompt_tokens > 0

    stream = client.completions.create(
        model="lm", prompt="Hello", max_tokens=8, seed=3, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage

    chat = client.chat.completions.create(
        model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=6, seed=1
    )
    assert chat.choices[0].message.role == "assistant"
    parts = client.chat.completions.create(
        model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=6, seed=1,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == chat.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["ab", "lm", "slow"]


def test_seeds_reproduce_and_bad_fields_are_named(gateways: Gateways) -> None:
    client = gateways.client(max_retries=0)
    runs = [
        client.completions.create(model="lm", prompt="Once", max_tokens=12, seed=s,
                                  temperature=1.0, top_p=0.95).choices[0].text
        for s in (11, 11, 12)
    ]
    assert runs[0] == runs[1]
    for fields, param in [({"n": 2}, "n"), ({"max_tokens": 500}, "max_tokens"),
                          ({"temperature": 3}, "temperature")]:
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="lm", prompt="x", **fields)  # type: ignore[call-overload]
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_stop_strings_end_the_text_before_them(gateways: Gateways) -> None:
    client = gateways.client()
    full = client.completions.create(model="lm", prompt="Stop", max_tokens=30,
                                     temperature=0, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    stop = text[6:9]
    assert len(stop) == 3
    cut = client.completions.create(model="lm", prompt="Stop", max_tokens=30, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_generate_extension(gateways: Gateways) -> None:
    body = {"text_input": "Hello", "parameters": {"max_tokens": 5, "temperature": 0}}
    one = httpx.post(f"{gateways.a.url}/v2/models/lm/generate", json=body).json()
    assert one["model_name"] == "lm" and one["usage"]["completion_tokens"] <= 5
    with httpx.stream("POST", f"{gateways.a.url}/v2/models/lm/versions/1/generate_stream",
                      json=body) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data:")]
    assert "".join(httpx.Response(200, content=e[5:]).json()["text_output"] for e in events) == (
        one["text_output"]
    )
    refused = httpx.post(f"{gateways.a.url}/v2/models/lm/generate", json={"parameters": {}})
    assert refused.status_code == 400 and "text_input" in refused.json()["error"]


# -- scheduling on the gateway ------------------------------------------------------------------


class LongStream(threading.Thread):
    """A streamed completion on ``slow`` that runs until :meth:`close` (8000 tokens)."""

    def __init__(self, gateways: Gateways) -> None:
        super().__init__()
        self.client = gateways.client(max_retries=0)
        self.started = threading.Event()
        self.finished = False
        self.closing = False
        self.start()

    def run(self) -> None:
        stream = self.client.completions.create(
            model="slow", prompt="a", max_tokens=8000, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            self.started.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                self.finished = True
            if self.closing:
                break
        stream.close()  # the client goes away mid-stream

    def close(self) -> None:
        self.closing = True
        self.join(10)


def test_join_mid_batch_queue_full_and_cancel(gateways: Gateways) -> None:
    """``slow``: max_num_seqs 2, max_queue_size 1."""
    url = gateways.a.url
    client = gateways.client(max_retries=0)
    first = LongStream(gateways)
    assert first.started.wait(10)
    # a short request joins the running batch and finishes while the long one goes on
    short = client.completions.create(model="slow", prompt="b", max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert not first.finished
    second = LongStream(gateways)
    assert second.started.wait(10)
    third = LongStream(gateways)  # the batch is full: it waits
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{url}/metrics").text, "roost_llm_waiting_sequences",
                 model="slow") < 1:
        assert time.monotonic() < deadline, "the third request never waited"
        time.sleep(0.02)
    refused = httpx.post(f"{url}/v1/completions", json={"model": "slow", "prompt": "c"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "server_error"
    # the first client goes away: its sequence leaves the batch and the waiting one starts
    first.close()
    assert third.started.wait(10), "the waiting sequence never got the freed slot"
    second.close()
    third.close()
    text = ""
    deadline = time.monotonic() + 10
    while metric(text, "roost_llm_requests_total", model="slow", finish_reason="abort") < 3:
        assert time.monotonic() < deadline, "aborts not counted"
        time.sleep(0.05)
        text = httpx.get(f"{url}/metrics").text
    assert metric(text, "roost_llm_running_sequences", model="slow") == 0
    assert metric(text, "roost_llm_kv_cache_usage_ratio", model="slow") == 0
    assert metric(text, "roost_llm_time_to_first_token_seconds_count", model="slow") >= 4
    assert metric(text, "roost_llm_generated_tokens_total", model="slow") > 3
    rows = query_until(
        gateways.settings_a,
        "select status, json_extract(inputs, '$.max_tokens')::int from predictions "
        "where model = 'slow' and status in (499, 503)",
        lambda rows: len(rows) == 4,
    )
    assert sorted(rows) == [(499, 8000)] * 3 + [(503, 16)]


# -- routing and the log ---------------------------------------------------------------------


def test_canary_shadow_pinning_and_the_log(gateways: Gateways) -> None:
    client = gateways.client()
    seen: dict[str, str] = {}
    for user in range(30):
        raw = client.completions.with_raw_response.create(
            model="ab", prompt="hi", max_tokens=2, extra_headers={"roost-user": f"u{user}"}
        )
        seen[f"u{user}"] = raw.headers["roost-variant"]
    assert set(seen.values()) == {"canary", "production"}
    pinned = client.completions.with_raw_response.create(model="ab:1", prompt="hi", max_tokens=2)
    assert pinned.headers["roost-variant"] == "v1"
    rows = query_until(
        gateways.settings_a,
        "select version, route, shadow, json_extract(outputs, '$.prompt_tokens')::int, "
        "json_extract(outputs, '$.completion_tokens')::int, "
        "json_extract_string(outputs, '$.finish_reason'), "
        "json_extract(outputs, '$.ttft_ms') is not null "
        "from predictions where model = 'ab' and status = 200",
        lambda rows: sum(1 for r in rows if r[2]) >= 31 and len(rows) >= 62,
    )
    primary = [r for r in rows if not r[2]]
    assert {r[1] for r in primary} >= {"canary", "production", "pinned"}
    assert {r[0] for r in rows if r[2]} == {3}  # the shadow version answered every copy
    assert all(r[3] > 0 and 0 < r[4] <= 2 and r[5] in ("length", "stop") for r in rows)
    assert all(r[6] for r in primary)


# -- remote backends ------------------------------------------------------------------------


def test_openai_upstream_and_triton_generate_forward_to_another_gateway(
    gateways: Gateways,
) -> None:
    direct = gateways.client().completions.create(
        model="lm", prompt="Remote", max_tokens=10, temperature=0
    )
    via_b = gateways.client("b")
    for model in ("proxy", "tproxy"):
        answer = via_b.completions.create(model=model, prompt="Remote", max_tokens=10,
                                          temperature=0)
        assert answer.choices[0].text == direct.choices[0].text, model
        parts = via_b.completions.create(model=model, prompt="Remote", max_tokens=10,
                                         temperature=0, stream=True)
        assert "".join(p.choices[0].text for p in parts if p.choices) == answer.choices[0].text
    chat = via_b.chat.completions.create(
        model="proxy", messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=2
    )
    same = gateways.client().chat.completions.create(
        model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=2
    )
    assert chat.choices[0].message.content == same.choices[0].message.content
    assert chat.usage == same.usage
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        via_b.completions.create(model="proxy", prompt="x", max_tokens=999)


def test_a_plain_request_whose_client_leaves_is_aborted(gateways: Gateways) -> None:
    url = gateways.a.url

    def aborts() -> float:
        text = httpx.get(f"{url}/metrics").text
        return metric(text, "roost_llm_requests_total", model="slow", finish_reason="abort")

    before = aborts()
    body = {"model": "slow", "prompt": "a", "max_tokens": 8000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while it generates
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    deadline = time.monotonic() + 10
    while aborts() < before + 1:
        assert time.monotonic() < deadline, "the abandoned generation went on"
        time.sleep(0.05)
    running = metric(httpx.get(f"{url}/metrics").text, "roost_llm_running_sequences",
                     model="slow")
    assert running == 0
