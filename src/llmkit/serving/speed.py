"""`plan --serve` on a CPU times the model's replica through llmkit's own server (its engine and its
HTTP layer), so that everything around the tensor work is in the figures as this machine does it.

The engine's Python around each step (the cache's bookkeeping, sampling, detokenizing, events) and
the HTTP layer's (per streamed token an event handed to the event loop, a JSON chunk and its write,
the client reading it; per request the parsing, validation, tokenization and queueing) vary from
one CPU to another more than one would guess: constants fitted on one 2-core EPYC made a plan 2.3x
too slow on another. They also overlap with the tensor work in ways no sum of parts gets right on a
few cores (the engine's thread, the event loop's and the client's share them), so they are not
modelled: the plan starts the real server (``serving.server.assemble``, uvicorn on 127.0.0.1) on a
replica of the model (``measure_cpu_serving``), and a client in a process of its own (as a load
test's client shares the server's cores) streams to it:

- a decode step of ``rows`` rows: ``rows`` concurrent streams of ``SERVED_TOKENS`` tokens after
  ``SERVED_PROMPT``-token prompts, the time between tokens while every stream is decoding;
- a request's time to its first token on an idle server, for a prompt of so many tokens.

Without the `serve` extra (fastapi, uvicorn) the engine alone is timed (``generate.batch``
in this process) and the plan says the HTTP layer was left out.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from llmkit.planning.measure import best_seconds, last_level_cache_bytes

SERVED_PROMPT = 8  # prompt tokens of each stream whose decode steps are timed
SERVED_TOKENS = 32  # tokens per timed stream
SERVED_SPAN = SERVED_PROMPT + SERVED_TOKENS // 2  # the rows' mean span while they are timed
ROUNDS = 3  # timed rounds; the median is kept


def stand_in_tokenizer(vocab: int) -> Any:
    """A tokenizer of ``vocab`` ids (llmkit's special tokens among them) whose every plain token
    decodes to one to three printable ASCII characters, so that detokenizing a generated id always
    adds text, as it mostly does with a trained tokenizer: a timed stream has a chunk per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from llmkit.config.schema import TokenizerConfig
    from llmkit.data.tokenizer import special_tokens, wrap

    cfg = TokenizerConfig()
    printable = [chr(c) for c in range(33, 127)]
    words = itertools.chain(printable, map("".join, itertools.product(printable, repeat=2)),
                            map("".join, itertools.product(printable, repeat=3)))
    plain = max(1, vocab - len(special_tokens(cfg)))  # at most 94 + 94^2 + 94^3 (about 840,000)
    raw = Tokenizer(models.BPE(vocab={w: i for i, w in enumerate(itertools.islice(words, plain))}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    return wrap(raw, cfg, 1 << 20)


def serve_extra() -> bool:
    """Whether the `serve` extra (the server and the client) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "httpx"))


class ReplicaServer:
    """llmkit's server over a model already in memory, on 127.0.0.1 in a thread of this process,
    until :meth:`close`; timed by a client process."""

    def __init__(self, model: Any, tokenizer: Any, serve: Any) -> None:
        import uvicorn

        from llmkit.config.schema import GenerateConfig
        from llmkit.serving.server import assemble

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # as `llmkit serve` runs with the config's serve section, but open to every timed stream at once
        cfg = serve.model_copy(update={"host": "127.0.0.1", "port": self.port, "prefix_cache_mb": 0, "compile": False,
                                       "max_batch_size": 4096, "max_concurrency": 4096, "max_queue": 4096,
                                       "api_key_env": None, "adapters": {}, "allow_adapter_loading": False,
                                       "cors_origins": []})
        self.vocab = len(tokenizer) - 4  # its plain tokens (see stand_in_tokenizer)
        self.built = assemble(model, tokenizer, cfg, GenerateConfig(), "m", "plan", note=lambda _line: None,
                              uvicorn_logging=False)
        self.server = uvicorn.Server(self.built.config)
        self.thread = threading.Thread(target=self.server.run, name="plan-replica-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.01)
        if not self.server.started:
            self.close()
            raise RuntimeError("the replica's server did not start within 60 s")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.built.engine.close()

    def step_seconds(self, rows: int) -> list[float]:
        """One decode step of ``rows`` streams, in each of ``ROUNDS`` rounds."""
        return self._client("streams", rows, SERVED_PROMPT, SERVED_TOKENS)

    def first_token_seconds(self, tokens: int) -> list[float]:
        """An idle server's time to the first token of a ``tokens``-token prompt, in each round."""
        return self._client("first", 1, tokens, 1)

    def _client(self, what: str, clients: int, prompt: int, tokens: int) -> list[float]:
        args = json.dumps([self.port, what, clients, self.vocab, prompt, tokens, ROUNDS])
        out = subprocess.run([sys.executable, "-c", _CLIENT, args], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"the plan's timing client failed: {out.stderr.strip()[-500:]}")
        found = [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]
        if not found:
            raise RuntimeError(f"the plan's timing client saw no {what} to time")
        return found


# the load's client, in a process of its own as a load test's is (in the server's process, it
# competed for the interpreter's lock and made the HTTP layer look three times as costly)
_CLIENT = r"""
import asyncio, json, sys, time
import httpx

port, what, clients, vocab, prompt, tokens, rounds = json.loads(sys.argv[1])
body = {"model": "m", "prompt": [1 + i % (vocab - 1) for i in range(prompt)], "max_tokens": tokens,
        "stream": True, "ignore_eos": True, "temperature": 0}


async def one(http, request=body):
    t0, stamps = time.perf_counter(), []
    async with http.stream("POST", "/v1/completions", json=request) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter())
    return t0, stamps


def between_tokens(runs):
    # the steps while every stream is in the batch: from the last stream's first token to the first one's last
    last = max(runs, key=lambda r: r[1][0])[1]
    end = min(r[1][-1] for r in runs)
    inside = [t for t in last if t <= end]
    return (inside[-1] - inside[0]) / (len(inside) - 1) if len(inside) > 1 else None


async def main():
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as http:
        await one(http, {**body, "max_tokens": 2})  # warm-up: the first request pays one-off costs
        found = []
        for _ in range(rounds):
            runs = await asyncio.gather(*(one(http) for _ in range(clients)))
            found.append(runs[0][1][0] - runs[0][0] if what == "first" else between_tokens(runs))
    print(json.dumps([f for f in found if f is not None]))


asyncio.run(main())
"""


def engine_seconds(model: Any, tokenizer: Any, fast: Any, rows: int, sampled: bool, prompt: int = SERVED_PROMPT,
                   steps: int = SERVED_TOKENS) -> tuple[list[float], list[float]]:
    """Without the server: (one decode step, one admission) in each of ``ROUNDS`` rounds of
    ``generate.batch.BatchDecoder`` as the server runs it (``fast``: its decode step, or None for
    the model's forward): ``rows`` rows of ``prompt`` tokens admitted together (their prefill, first
    tokens and joining the batch), then ``steps`` steps, the step a round's median (no steps: no
    step times)."""
    import torch

    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=steps + 1, temperature=0.8 if sampled else 0.0, ignore_eos=True)
    ids = torch.randint(0, len(tokenizer) - 4, (rows, prompt)).tolist()
    found_steps, found_admits = [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        decoder = BatchDecoder(model, tokenizer, fast=fast or False)
        decoder.add(ids, [params] * rows, list(range(rows)))
        found_admits.append(time.perf_counter() - t0)
        taken = []
        while decoder:
            s0 = time.perf_counter()
            decoder.step()
            taken.append(time.perf_counter() - s0)
        if taken:
            found_steps.append(statistics.median(taken))
    return found_steps, found_admits


SPAN_CAP = 1024  # a longer span's cost is extrapolated from the slope timed up to 1,024 positions (linear)
SLOPE_TURNS = 3  # the near and the far span are timed in turn this many times
PREFILL_CAP = 512  # longer prompts: timed at 256 and 512 tokens, extrapolated (linear + quadratic)


def measure_cpu_serving(cfg: Any, dtype: str = "fp32", sampled: bool = True, budget_s: float = 0.15) -> Any:
    """llmkit's server on this CPU for ``cfg``'s model, as a ``plan.serving.StepSpeed``.

    Timed on a replica of the model (its shapes and dtype, quantized as the server quantizes it,
    packed as ``serve.pack_weights`` has the server pack it) with as many of its decoder layers as
    stream from memory when the model's weights exceed the last-level cache, as they do in the
    step, and a slice of a huge vocabulary, served by llmkit's own server in this process (its
    engine and HTTP layer; a client process streams to it):

    - a decode step of ``rows`` rows: the replica's, through the server;
    - the layers the replica lacks, and the span beyond the timed streams': one decoder layer
      timed alone on the engine's thread (``DecodeStep.layer``, as the step calls it; the model's
      forward for architectures without one) at the span asked for and at the streams', per layer;
    - a prompt's time to its first token on the idle server; prompts longer than ``PREFILL_CAP``
      and the layers the replica lacks added from one layer's prefill timings;
    - a vocabulary beyond the replica's slice: the head's and sampling's time, scaled.

    Long spans are timed at ``SPAN_CAP`` positions and extrapolated, so a plan for long contexts
    stays a few seconds. Without the `serve` extra the engine is timed without its HTTP layer.
    """
    import weakref

    from llmkit.planning.serving import StepSpeed

    timer = _ServingTimer(cfg, dtype, sampled, budget_s)
    if timer.server is not None:
        weakref.finalize(timer, timer.server.close)  # the speed's functions keep the timer, and the server, alive
    return StepSpeed(timer.step_seconds, timer.prefill_seconds, timer.parts, longest_span=True, note=timer.steadiness)


class _ServingTimer:
    """The timings behind ``measure_cpu_serving``, each measured once when first asked for, on a
    model of the config's shapes with ``copies`` decoder layers and a slice of its vocabulary,
    through the server's own code: the server itself for whole steps and first tokens (the engine
    alone without the `serve` extra); on the engine's thread, its decode step's
    ``DecodeStep.layer`` for one layer of a decode step, the model's forward (as
    ``generate.batch`` prefills, and decodes architectures without a decode step) otherwise."""

    def __init__(self, cfg: Any, dtype: str, sampled: bool, budget_s: float) -> None:
        import torch

        from llmkit.config.derived import vocab_size
        from llmkit.config.schema import ServeConfig
        from llmkit.generate.batch import cache_argument
        from llmkit.model.build import build_model
        from llmkit.planning.params import count_parameters
        from llmkit.planning.serving import element_bytes

        self.torch_type = torch.bfloat16 if dtype == "bf16" else torch.float32
        m = cfg.model
        h, self.layers, vocab = m.hidden_size, m.num_hidden_layers, vocab_size(cfg)
        self.h, self.sampled, self.budget_s = h, sampled, budget_s
        e = {"int8": 1, "int4": 1}.get(dtype, element_bytes(dtype))  # bytes per weight, about
        llc = last_level_cache_bytes()
        pc = count_parameters(m, vocab)
        layer_bytes = (pc.matmul - h * vocab) * e // self.layers
        streams = pc.matmul * e > llc  # then enough layers that they stream from memory, as in the step
        self.copies = min(self.layers, max(1, -(-2 * llc // max(1, layer_bytes)))) if streams else min(self.layers, 4)
        kept = min(vocab, max(1, 256 * 2**20 // (h * e)))  # a slice of a huge vocabulary, its time scaled
        self.head_scale = vocab / kept
        # room for the longest prompt timed through its server (a plan never asks past the model's positions)
        positions = max(m.max_position_embeddings, PREFILL_CAP + 1)
        replica = m.model_copy(update={"num_hidden_layers": self.copies, "vocab_size": None,
                                       "max_position_embeddings": positions})
        with torch.no_grad():
            self.model = build_model(replica, kept, 0, None, seed=0).to(self.torch_type).eval()
        if dtype in ("int8", "int4"):  # as load_for_inference quantizes a served model
            from llmkit.wquant import quantize_model

            quantize_model(self.model, 8 if dtype == "int8" else 4)
        self.model.config.use_cache = True
        self.cache_kw = cache_argument(self.model)
        self.tokenizer = stand_in_tokenizer(kept)
        self.timings: dict[tuple[Any, ...], float] = {}
        self.rounds: dict[tuple[str, int], list[float]] = {}
        serve = getattr(cfg, "serve", None) or ServeConfig()
        self.server, self.step = None, None
        self.unserved = "the `serve` extra is not installed"  # why the HTTP layer is left out, if it is
        if serve_extra():
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # the server's note on packing is not the plan's
                    self.server = ReplicaServer(self.model, self.tokenizer, serve)
            except (OSError, RuntimeError) as exc:  # no socket on 127.0.0.1 here: the engine alone
                self.unserved = f"the replica's server could not start here ({exc})"
        if self.server is not None:
            self.step = self.server.built.engine.step  # the server's decode step, made on the engine's thread
        else:
            from llmkit.serving.engine import decode_step

            with contextlib.redirect_stderr(io.StringIO()):  # its note on packing is not the plan's
                self.step = decode_step(self.model, self.tokenizer, compiled=False, pack=serve.pack_weights)

    def _timed(self, key: tuple[Any, ...], fn: Callable[[], float]) -> float:
        """``fn``'s timing, measured once: on the engine's thread when the replica is served (oneDNN
        products ran ~25% slower on a thread other than the one that packed them)."""
        if key not in self.timings:
            self.timings[key] = self.server.built.engine.call(fn).result() if self.server is not None else fn()
        return self.timings[key]

    def _best(self, fn: Callable[[], Any]) -> float:
        # many runs of a short timing: on a busy CPU the best of five was 1.7x off from one call to the next
        return best_seconds(fn, budget_s=self.budget_s, max_runs=50)

    def _rounds(self, key: tuple[Any, ...], found: list[float]) -> float:
        """The median of a measurement's rounds, which are kept for :meth:`steadiness`."""
        self.rounds[key] = found
        return statistics.median(found)

    def served_step(self, rows: int) -> float:
        """One decode step of ``rows`` rows on the replica (span ``SERVED_SPAN``), through the server."""
        if ("served", rows) not in self.timings:
            self.timings[("served", rows)] = self._rounds(("step", rows), (
                self.server.step_seconds(rows) if self.server is not None
                else engine_seconds(self.model, self.tokenizer, self.step, rows, self.sampled)[0]))
        return self.timings[("served", rows)]

    def first_token(self, tokens: int) -> float:
        """An idle server's time to the first token of a ``tokens``-token prompt, on the replica."""
        if ("first", tokens) not in self.timings:
            self.timings[("first", tokens)] = self._rounds(("first token", tokens), (
                self.server.first_token_seconds(tokens) if self.server is not None
                else engine_seconds(self.model, self.tokenizer, self.step, 1, self.sampled, prompt=tokens, steps=0)[1]))
        return self.timings[("first", tokens)]

    def steadiness(self) -> str | None:
        """How much the rounds of the replica's most varied measurement differed, when by over a
        fifth of their median: the speeds planned are that uncertain; and that the HTTP layer was
        left out, when the replica could not be served."""
        lines = [] if self.server is not None else [
            f"the engine was timed without its HTTP layer, as {self.unserved}: the speeds are somewhat optimistic"]
        worst = None
        for (what, n), found in self.rounds.items():
            spread = (max(found) - min(found)) / statistics.median(found)
            if spread > 0.2 and (worst is None or spread > worst[0]):
                unit = f"{n} stream{'s' if n > 1 else ''}" if what == "step" else f"a {n}-token prompt"
                worst = (spread, f"{what} for {unit}: {1e3 * min(found):.1f}-{1e3 * max(found):.1f} ms over "
                                 f"{len(found)} rounds")
        if worst is not None:
            lines.append(f"this machine's speed varied while it was measured ({worst[1]}); the speeds are as "
                         "uncertain (other work on the machine, or its clock)")
        return "; ".join(lines) or None

    def _forward_seconds(self, rows: int, length: int, span: int) -> float:
        """The model's forward (all its layers) over ``length`` new positions of ``rows`` sequences
        whose cache already holds ``span - length``, as ``generate.batch`` calls it."""
        import torch
        from transformers import DynamicCache

        held = span - length
        mask = torch.ones(rows, span, dtype=torch.long)
        ids = torch.randint(0, self.model.config.vocab_size, (rows, span))
        with torch.inference_mode():
            cache = DynamicCache()
            if held:
                self.model(input_ids=ids[:, :held], attention_mask=mask[:, :held], use_cache=True, logits_to_keep=1,
                           **{self.cache_kw: cache})
            positions = torch.arange(held, span).expand(rows, length)

            def run() -> None:
                self.model(input_ids=ids[:, held:], attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{self.cache_kw: cache})
                cache.crop(held)  # the next run sees the same span

            return self._best(run)

    def layer_seconds(self, rows: int, length: int, span: int) -> float:
        """One decoder layer: ``rows`` sequences of ``length`` new positions over a ``span``."""
        return self._timed(("layer", rows, length, span), self._layer_timing(rows, length, span))

    def _layer_timing(self, rows: int, length: int, span: int) -> Callable[[], float]:
        if length == 1 and self.step is not None:
            return lambda: self._step_layers_seconds(rows, span) / self.copies
        # a prefill, or a decode step through transformers' forward (the head's row aside)
        outside = self._outside_seconds(rows) if length == 1 else 0.0
        return lambda: max(0.0, self._forward_seconds(rows, length, span) - outside) / self.copies

    def span_slope(self, rows: int, far: int) -> float:
        """What each position of span adds to one layer's decode step, between ``SERVED_SPAN`` and
        ``far``. The two spans are timed in turn, best of each kept: timed one after the other,
        a machine whose speed drifted made the longer span the faster one (a slope of zero)."""
        near_timing, far_timing = self._layer_timing(rows, 1, SERVED_SPAN), self._layer_timing(rows, 1, far)

        def timing() -> float:
            near, farther = near_timing(), far_timing()
            for _ in range(SLOPE_TURNS - 1):
                near, farther = min(near, near_timing()), min(farther, far_timing())
            return max(0.0, farther - near) / (far - SERVED_SPAN)

        return self._timed(("slope", rows, far), timing)

    def _step_layers_seconds(self, rows: int, span: int) -> float:
        """The decode step's layers (``DecodeStep.layer``, every copy) for ``rows`` rows over ``span``."""
        import torch

        step, t = self.step, self.torch_type
        heads = self.model.config.num_attention_heads
        kv_heads = self.model.config.num_key_value_heads or heads
        head_dim = self.h // heads
        x = torch.randn(rows, 1, self.h, dtype=t)
        cos = torch.randn(rows, 1, 1, head_dim, dtype=t)
        sin = torch.randn(rows, 1, 1, head_dim, dtype=t)
        buffers = [(torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=t),
                    torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=t)) for _ in range(self.copies)]
        valid = torch.ones(rows, 2 * span, dtype=torch.long)

        def run() -> None:
            mask = valid[:, :span].bool()[:, None, None, :]
            for i, (k, v) in enumerate(buffers):
                step.layer(i, x, cos, sin, k[:, :, :span], v[:, :, :span], mask)

        with torch.inference_mode():
            return self._best(run)

    def _ends(self) -> tuple[Any, Any, Any, Any]:
        """The model's modules outside its layers, as the step calls them: (embedding, final norm,
        the head's product (packed where the step packed it), rotary embedding or None)."""
        body = self.model.base_model
        head_fn = self.step.head_fn if self.step is not None else self.model.get_output_embeddings()
        norm = getattr(body, "norm", None) or getattr(body, "ln_f")
        return self.model.get_input_embeddings(), norm, head_fn, getattr(body, "rotary_emb", None)

    def _outside_seconds(self, rows: int) -> float:
        """The forward's work outside its layers for one new position of ``rows`` sequences:
        embedding, final norm, head (the model's own modules; the head as the step multiplies)."""
        import torch

        embed, norm, head_fn, _ = self._ends()
        tokens = torch.randint(0, embed.num_embeddings, (rows, 1))

        def run() -> Any:
            return head_fn(norm(embed(tokens)))[:, 0].float()

        def timing() -> float:
            with torch.inference_mode():
                return self._best(run)

        return self._timed(("outside", rows), timing)

    def step_other_seconds(self, rows: int) -> float:
        """The step's work outside the layers: embedding, rotary angles, final norm, head (over the
        replica's slice of the vocabulary), sampling."""
        import torch

        from llmkit.generate.sampling import sample_rows

        embed, norm, head_fn, rotary = self._ends()
        tokens = torch.randint(0, embed.num_embeddings, (rows,))
        positions = torch.randint(0, 100, (rows, 1))
        generators = [torch.Generator().manual_seed(i) for i in range(rows)]

        def run() -> None:
            x = embed(tokens[:, None])
            if rotary is not None:
                rotary(x, positions)
            logits = head_fn(norm(x))[:, 0].float()
            chosen = logits.argmax(-1)
            if self.sampled:
                chosen = sample_rows((logits / 0.8).softmax(-1), generators)
            chosen.tolist()

        def timing() -> float:
            with torch.inference_mode():
                return self._best(run)

        return self._timed(("step", rows), timing)

    def prefill_layer(self, tokens: int) -> float:
        if tokens <= PREFILL_CAP:
            return self.layer_seconds(1, tokens, tokens)
        c = PREFILL_CAP
        half, full = self.layer_seconds(1, c // 2, c // 2), self.layer_seconds(1, c, c)
        quadratic = max(0.0, 2 * (full - 2 * half) / c**2)  # causal attention; the rest is linear in tokens
        return (full - quadratic * c**2) / c * tokens + quadratic * tokens**2

    def parts(self, rows: int, span: int) -> dict[str, float]:
        """A decode step: the replica's through the server, and what the model adds to it."""
        at = self.layer_seconds(rows, 1, SERVED_SPAN)
        out = {"served replica" if self.server is not None else "replica's engine": self.served_step(rows)}
        if self.layers > self.copies:
            out["more layers"] = (self.layers - self.copies) * at
        if span > SERVED_SPAN:  # attention grows linearly with the span: its slope over at least 512 positions
            slope = self.span_slope(rows, min(SPAN_CAP, max(span, SERVED_SPAN + 512)))
            out["longer span"] = self.layers * slope * (span - SERVED_SPAN)
        if self.head_scale > 1:
            out["more vocabulary"] = (self.head_scale - 1) * self.step_other_seconds(rows)
        return out

    def step_seconds(self, rows: int, span: int) -> float:
        return sum(self.parts(rows, span).values())

    def prefill_seconds(self, tokens: int) -> float:
        """An idle server's time to a ``tokens``-token prompt's first token."""
        timed = min(tokens, PREFILL_CAP)
        at = self.prefill_layer(timed)
        seconds = self.first_token(timed) + (self.layers - self.copies) * at
        seconds += self.layers * max(0.0, self.prefill_layer(tokens) - at)
        return seconds + (self.head_scale - 1) * self.step_other_seconds(1)
