"""The fast torch backend: static KV cache, CUDA-graph ViT and decode, greedy decoding on the device.

Same network and weights as :mod:`torch_backend` (the ``nn.Module`` is shared); what changes is how
it runs. On CUDA:

* the ViT + projector is compiled (``torch.compile``, dynamic tile count) and, for each tile count,
  captured once as a CUDA graph (all tiles in one batch); eager capture is the fallback;
* the decode step (:func:`greedy.greedy_step`) is compiled with ``torch.compile`` (it fuses the small
  norm/rope/softmax kernels) and captured as a CUDA graph per (batch, cache length);
* the prefill is captured as a CUDA graph per (state, exact prompt length, padding or not): eager it is
  ~800 small launches that the host, not the GPU, paces; replayed it is the same kernels in one launch.
  Exact lengths, not padded buckets, so the replay computes bit for bit what the eager prefill does;
  a robot's camera sends the same frame size and prompt, hence the same length, every time;
* :meth:`FastSession.generate` replays that graph and looks at the stop flags only every
  ``check_every`` tokens, so the host does not wait on the device per token.

On CPU the same code runs eagerly (no compile, no graphs): that is what the tests compare token for
token with the plain backend. Sampling and streaming use the shared generation loop through
``prefill``/``step``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import cast

import numpy as np
import torch

from ivl_ros.errors import OptionError
from ivl_ros.model.backends.greedy import GreedyState, capture, choose, greedy_step
from ivl_ros.model.backends.static_lm import KVCache, StaticLM
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.checkpoint import LoadedModel
from ivl_ros.model.generation import GenerationSettings, generate, upstream_position_ids

log = logging.getLogger(__name__)

CACHE_QUANTUM = 256  # cache lengths are rounded up to this, so a few graphs serve every prompt
STREAM_SLACK = 512   # room for new tokens when the length is not known up front (prefill/step use)
MAX_STATES = 3       # (batch, length) states kept, each with its KV cache and graph
MAX_PREFILLS = 2     # captured prefill lengths kept per state (a camera sends one prompt length over and over)
# Prefills of more tokens than this stay eager: there the GPU, not the launch rate, sets the time, and a
# graph would hold that prefill's activations (hundreds of MB for four cameras) for good.
PREFILL_GRAPH_TOKENS = 4096


def cache_length(tokens: int) -> int:
    return max(CACHE_QUANTUM, -(-tokens // CACHE_QUANTUM) * CACHE_QUANTUM)


class FastTorchBackend(TorchBackend):
    name = "torch"

    def __init__(self, loaded: LoadedModel, compile: bool | None = None, graphs: bool | None = None,
                 check_every: int = 8) -> None:
        super().__init__(loaded)
        cuda = self.device.type == "cuda"
        self.use_graphs = cuda if graphs is None else graphs and cuda
        self.use_compile = self.use_graphs if compile is None else compile
        self.check_every = max(1, check_every)
        # One StaticLM per model: it re-points the model's linears at fused weights, which must happen once.
        lm = self.model.__dict__.get("_ivl_static_lm")
        if lm is None:
            lm = StaticLM(self.model)
            # Through __dict__: as a registered submodule it would show up in the model's state_dict.
            self.model.__dict__["_ivl_static_lm"] = lm
        self.lm = lm
        self.vocab = int(self.model.lm_head.weight.shape[0])
        self._states: OrderedDict[tuple[int, int], GreedyState] = OrderedDict()
        self._step_fn = None
        self._vit_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._vit_pool = None
        self._prefill_pool = None
        # Compiled ViT on by default with graphs; IVL_VIT_COMPILE=0 turns it off (e.g. to compare with eager).
        self.compile_vit = self.use_compile and os.environ.get("IVL_VIT_COMPILE", "1") != "0"
        self._vit_compiled = None
        self.vit_mode = "eager"
        self.decode_mode = "eager"  # what the last captured decode ran as, for reports

    # -- vision --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_features(self, pixel_values: np.ndarray | torch.Tensor) -> torch.Tensor:
        pv = torch.as_tensor(pixel_values)
        if not self.use_graphs:
            return super().image_features(pv)
        tiles = int(pv.shape[0])
        entry = self._vit_graphs.get(tiles)
        if entry is None:
            entry = self._capture_vit(tiles, pv)
        graph, static_in, static_out = entry
        # Upload in float32 and convert on the device: copy_ across devices would convert on the CPU first.
        static_in.copy_(pv.to(self.device, non_blocking=True))
        graph.replay()
        return static_out

    def _vit_function(self):
        """ViT + projector, compiled (fuses LayerNorm/GELU/layer scale/residual
        passes between the matrix products); the eager module when compiling is off or failed."""
        eager = super().image_features
        if not self.compile_vit:
            return eager
        if self._vit_compiled is None:
            def features(pv: torch.Tensor) -> torch.Tensor:
                out = self.model.model.get_image_features(pixel_values=pv, return_dict=True)
                return cast(torch.Tensor, getattr(out, "pooler_output", out))

            # Automatic dynamic shapes: the second tile count recompiles with the count symbolic, and that
            # compile serves every later count; each count still gets its own CUDA graph below.
            self._vit_compiled = torch.compile(features)
        return self._vit_compiled

    def _capture_vit(self, tiles: int, example: torch.Tensor):
        static_in = example.to(self.device, self.dtype).clone()
        if self._vit_pool is None:
            self._vit_pool = torch.cuda.graph_pool_handle()
        attempts = [("compiled", self._vit_function())] if self.compile_vit else []
        attempts.append(("eager", super().image_features))
        for mode, fn in attempts:
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        fn(static_in)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._vit_pool):
                    static_out = fn(static_in)
                break
            except Exception as exc:  # a failed compile or capture must not break captioning
                log.warning("ViT graph capture (%s, %d tiles) failed, falling back: %s", mode, tiles, exc)
                torch.cuda.synchronize()
                self.compile_vit = False
        self.vit_mode = mode
        self._vit_graphs[tiles] = (graph, static_in, static_out)
        return self._vit_graphs[tiles]

    # -- decode states -------------------------------------------------------------------------------------
    def _step_function(self):
        if self._step_fn is None:
            self._step_fn = greedy_step
            if self.use_compile:
                import torch._dynamo

                # Each new (batch, length) would otherwise count against the default recompile limit.
                torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
                self._step_fn = torch.compile(greedy_step, fullgraph=True)
        return self._step_fn

    def state(self, batch: int, length: int) -> GreedyState:
        """The reusable state (and captured graph) for a batch and cache length; allocates on first use."""
        key = (batch, length)
        st = self._states.get(key)
        if st is not None:
            self._states.move_to_end(key)
            return st
        while len(self._states) >= MAX_STATES:
            self._states.popitem(last=False)
        st = GreedyState.allocate(self.lm, batch, length, self.device, self.dtype, self.vocab)
        self._states[key] = st
        return st

    def _capture_decode(self, st: GreedyState) -> None:
        st.reset(0, 0, 0)
        attempts = [("compiled+graph", self._step_function())] if self.use_compile else []
        attempts.append(("eager+graph", greedy_step))
        for mode, fn in attempts:
            try:
                st.graph = capture(lambda fn=fn: fn(self.lm, st))
                st.mode = mode
                break
            except Exception as exc:  # a failed compile or capture must not break captioning
                log.warning("decode graph capture (%s) failed, falling back: %s", mode, exc)
                torch.cuda.synchronize()
                if mode.startswith("compiled"):
                    self.use_compile = False  # do not pay for a failing compile again on the next state
        else:
            st.mode = "eager (graph capture failed)"
        self.decode_mode = st.mode

    def prefill_logits(self, st: GreedyState, embeds: torch.Tensor, positions: torch.Tensor,
                       key_valid: torch.Tensor, all_valid: bool) -> torch.Tensor:
        """``lm.prefill`` into ``st``'s cache + the last position's logits (B, V), replaying a graph on CUDA.

        The graph's output lives in a pool shared with other prefill graphs: use it before the next prefill.
        """
        key = (int(embeds.shape[1]), all_valid)
        graphs = self.use_graphs and embeds.shape[0] * embeds.shape[1] <= PREFILL_GRAPH_TOKENS
        entry = st.prefills.get(key) if graphs else None
        if entry is None and graphs and key not in st.prefills:
            entry = self._capture_prefill(st, key, embeds, positions, key_valid)
        if entry is None:
            hidden = self.lm.prefill(embeds, positions, key_valid, st.cache, all_valid=all_valid)
            return self.lm.lm_head(hidden[:, -1])
        graph, inputs, logits = entry
        for dst, src in zip(inputs, (embeds, positions, key_valid), strict=True):
            dst.copy_(src)
        graph.replay()
        return logits

    def _capture_prefill(self, st: GreedyState, key: tuple[int, bool], embeds: torch.Tensor,
                         positions: torch.Tensor, key_valid: torch.Tensor):
        while len(st.prefills) >= MAX_PREFILLS:
            st.prefills.pop(next(iter(st.prefills)))
        inputs = (embeds.clone(), positions.clone(), key_valid.clone())
        out: list[torch.Tensor] = []

        def run() -> None:
            hidden = self.lm.prefill(inputs[0], inputs[1], inputs[2], st.cache, all_valid=key[1])
            out[:] = [self.lm.lm_head(hidden[:, -1])]

        if self._prefill_pool is None:
            self._prefill_pool = torch.cuda.graph_pool_handle()
        try:
            graph = capture(run, warmup=1, pool=self._prefill_pool)
        except Exception as exc:  # a failed capture must not break captioning: this length stays eager
            log.warning("prefill graph capture (length %d) failed, running it eagerly: %s", key[0], exc)
            torch.cuda.synchronize()
            st.prefills[key] = None
            return None
        st.prefills[key] = (graph, inputs, out[0])
        return st.prefills[key]

    def run_step(self, st: GreedyState) -> None:
        if st.graph is not None:
            st.graph.replay()
        else:
            greedy_step(self.lm, st)

    def session(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                pixel_values: np.ndarray | None) -> FastSession:
        return FastSession(self, input_ids, attention_mask, pixel_values)


class FastSession:
    """One request on the fast backend: ``generate`` (greedy, on the device) or ``prefill``/``step``."""

    def __init__(self, backend: FastTorchBackend, input_ids: np.ndarray, attention_mask: np.ndarray,
                 pixel_values: np.ndarray | None) -> None:
        self.backend = backend
        self.input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        self.mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        self.pixel_values = pixel_values
        self.state: GreedyState | None = None

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])

    def _prefill(self, st: GreedyState, graphs: bool = False) -> torch.Tensor:
        """Run the prompt into ``st``'s cache; returns last-position logits (B, V) on the device.

        ``graphs``: replay/capture the prefill graph; only for the backend's long-lived states, since a
        capture costs an eager run and would be wasted on a one-off state.
        """
        b = self.backend
        dev = b.device
        ids = torch.from_numpy(self.input_ids).to(dev)
        mask = torch.from_numpy(self.mask).to(dev)
        embeds = b.embed_prompt(ids, self.pixel_values)
        positions = torch.from_numpy(upstream_position_ids(self.mask)).to(dev)
        all_valid = bool(self.mask.all())
        if graphs:
            logits = b.prefill_logits(st, embeds, positions, mask.bool(), all_valid)
        else:
            hidden = b.lm.prefill(embeds, positions, mask.bool(), st.cache, all_valid=all_valid)
            logits = b.lm.lm_head(hidden[:, -1])
        st.positions.copy_(positions[:, -1] + 1)
        st.slot.fill_(ids.shape[1])
        return logits

    def _check_length(self, tokens: int) -> None:
        if tokens > self.backend.lm.max_positions:
            raise OptionError(f"prompt plus new tokens ({tokens}) exceed the model's "
                              f"{self.backend.lm.max_positions} positions")

    @torch.inference_mode()
    def generate(self, settings: GenerationSettings, eos_id: int, pad_id: int) -> list[list[int]]:
        """Token ids per row with ``generation.generate``'s semantics; greedy runs on the device."""
        settings = settings.validated()
        if settings.do_sample:
            return generate(self, self.batch, settings, eos_id, pad_id)
        n = settings.max_new_tokens
        self._check_length(self.input_ids.shape[1] + n)
        b = self.backend
        st = b.state(self.batch, cache_length(self.input_ids.shape[1] + n))
        if n > 1 and b.use_graphs and st.mode == "eager" and st.graph is None:
            # Captured on first need (a one-token request never compiles); capturing scribbles on the state,
            # which the reset and prefill below overwrite.
            b._capture_decode(st)
        st.reset(settings.min_new_tokens, eos_id, pad_id)
        choose(self._prefill(st, graphs=b.use_graphs), st)
        done = 1
        while done < n:
            if (done - 1) % b.check_every == 0 and bool(st.finished.all()):
                break
            b.run_step(st)
            done += 1
        tokens = st.out[:, :done].cpu().numpy()
        return [_until_stop(row, eos_id) for row in tokens]

    # -- the DecoderSession protocol (sampling, streaming) ------------------------------------------------
    @torch.inference_mode()
    def prefill(self) -> np.ndarray:
        length = self.input_ids.shape[1]
        self._check_length(length + 1)
        self.state = GreedyState.allocate(self.backend.lm, self.batch, cache_length(length + STREAM_SLACK),
                                          self.backend.device, self.backend.dtype, self.backend.vocab)
        return self._prefill(self.state).float().cpu().numpy()

    @torch.inference_mode()
    def step(self, next_ids: np.ndarray) -> np.ndarray:
        st = self.state
        assert st is not None, "prefill() first"
        if int(st.slot) >= st.cache.length:
            self._grow(st)
        st.ids.copy_(torch.from_numpy(np.asarray(next_ids, dtype=np.int64)))
        self._check_length(int(st.slot) + 1)
        logits = self.backend.lm.decode(st.ids, st.positions, st.slot, st.cache)
        st.positions += 1
        st.slot += 1
        return logits.float().cpu().numpy()

    def _grow(self, st: GreedyState) -> None:
        old = st.cache
        new = self.backend.lm.new_cache(self.batch, 2 * old.length, old.valid.device, old.keys[0].dtype)
        for src, dst in zip(old.keys + old.values, new.keys + new.values, strict=True):
            dst[:, :, :old.length] = src
        new.valid[:, :old.length] = old.valid
        st.cache = KVCache(new.keys, new.values, new.valid)


def _until_stop(row: np.ndarray, eos_id: int) -> list[int]:
    hits = np.flatnonzero(row == eos_id)
    end = int(hits[0]) + 1 if hits.size else len(row)
    return [int(t) for t in row[:end]]
