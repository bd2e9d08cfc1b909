"""The fast torch backend: device tiling, one-replay first token, fused Triton decode, greedy on the device.

Same network and weights as :mod:`torch_backend` (the ``nn.Module`` is shared); what changes is how
it runs. On CUDA:

* tiling runs on the device (:mod:`device_tiling`): the frame goes up once as uint8 and the tiles are
  Pillow's pixels bit for bit (``pixel_values_for``, which the engine calls instead of the CPU tiler);
* the first token is one CUDA-graph replay per (state, exact prompt length, padding or not, tile count):
  ViT + projector (compiled, eager fallback), the embedding lookup, the scatter of image features into
  the image-context positions (their indices come from the prompt ids on the host, so nothing waits on
  the device), the prefill into the state's KV cache and the LM head on the last position. Exact lengths,
  not padded buckets, so the replay computes what the eager pieces compute; a robot's camera sends the
  same frame size and prompt, hence the same length, every time. Opt-in (``compile_prefill`` or
  ``IVL_PREFILL_COMPILE=1``): the prefill inside that graph compiled with ``torch.compile`` per captured
  length, so that Inductor fuses the norms, RoPE and residuals that otherwise run eagerly between the GEMMs;
* each batch-1 decode step is the fused Triton kernels of :mod:`triton_decode` (about 125 launches, every
  one a weight stream with the norms, RoPE, cache write, attention over the valid cache, residuals, SiLU,
  argmax and the greedy bookkeeping fused around it), captured as one CUDA graph per cache length; larger
  batches, or no Triton, run the step (:func:`greedy.greedy_step`) compiled with ``torch.compile``, captured;
* :meth:`FastSession.generate` replays that graph and looks at the stop flags only every
  ``check_every`` tokens, so the host does not wait on the device per token.

All captured graphs share one private memory pool (never replayed concurrently; their live outputs are
kept), so the ViT's and the prefill's activations reuse the same memory.

On CPU the same code runs eagerly (no compile, no graphs): that is what the tests compare token for
token with the plain backend. Sampling and streaming use the shared generation loop through
``prefill``/``step``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from ivl_ros.errors import OptionError
from ivl_ros.model.backends.greedy import GreedyState, capture, choose, greedy_step
from ivl_ros.model.backends.static_lm import KVCache, StaticLM
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.checkpoint import LoadedModel
from ivl_ros.model.generation import GenerationSettings, cut_at_stop, generate, upstream_position_ids
from ivl_ros.model.tiling import pixel_values_for

log = logging.getLogger(__name__)

CACHE_QUANTUM = 256  # cache lengths are rounded up to this, so a few graphs serve every prompt
STREAM_SLACK = 512  # room for new tokens when the length is not known up front (prefill/step use)
MAX_STATES = 3  # (batch, length) states kept, each with its KV cache and graph
MAX_PREFILLS = 2  # captured prefill lengths kept per state (a camera sends one prompt length over and over)
# Prefills of more tokens than this stay eager: there the GPU, not the launch rate, sets the time, and a
# graph would hold that prefill's activations (hundreds of MB for four cameras) for good.
PREFILL_GRAPH_TOKENS = 4096
# The fused Triton decode serves batch 1, the latency case it is built for; at batch 4 the compiled step was
# faster on the H200 (1745 vs 1049 tok/s, benchmarks/h200-notes.md), so larger batches keep it.
FUSED_MAX_BATCH = 1


def cache_length(tokens: int) -> int:
    return max(CACHE_QUANTUM, -(-tokens // CACHE_QUANTUM) * CACHE_QUANTUM)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401  # pyright: ignore[reportMissingImports]  (GPU machines only)
    except ImportError:
        return False
    return True


class FastTorchBackend(TorchBackend):
    name = "torch"

    def __init__(
        self,
        loaded: LoadedModel,
        compile: bool | None = None,
        graphs: bool | None = None,
        check_every: int = 8,
        fused: bool | None = None,
        device_tiling: bool | None = None,
        compile_prefill: bool | None = None,
    ) -> None:
        """``fused``: the Triton decode kernels (default: with graphs, when Triton is installed and the model is
        bf16; ``IVL_FUSED_DECODE=0`` turns them off). ``device_tiling``: tile frames on the model's device
        (default: on CUDA). ``compile_prefill``: the first-token graph's prefill compiled per prompt length
        (default off; ``IVL_PREFILL_COMPILE=1`` turns it on; only with graphs and compiling)."""
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
        self.tokens_per_tile = int(loaded.spec.tokens_per_tile)
        self._states: OrderedDict[tuple[int, int], GreedyState] = OrderedDict()
        self._step_fn = None
        self._vit_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None  # one private graph pool: ViT, prefill and first-token graphs never run concurrently
        # Compiled ViT on by default with graphs; IVL_VIT_COMPILE=0 turns it off (e.g. to compare with eager).
        self.compile_vit = self.use_compile and os.environ.get("IVL_VIT_COMPILE", "1") != "0"
        self._vit_compiled = None
        self.vit_mode = "eager"
        if compile_prefill is None:
            compile_prefill = os.environ.get("IVL_PREFILL_COMPILE", "0") == "1"
        self.compile_prefill = bool(compile_prefill) and self.use_graphs and self.use_compile
        self._prefill_compiled = None
        self.prefill_mode = "eager"  # what the last captured first-token graph's prefill ran as, for reports
        self.decode_mode = "eager"  # what the last captured decode ran as, for reports
        self.use_fused = self._fused_wanted(fused)
        self.fused_max_batch = FUSED_MAX_BATCH
        wants_tiling = cuda if device_tiling is None else device_tiling
        self.tiler = None
        if wants_tiling:
            from ivl_ros.model.backends.device_tiling import DeviceTiler

            self.tiler = DeviceTiler(self.device)

    def _fused_wanted(self, fused: bool | None) -> bool:
        if fused is False or (
            fused is None and (not self.use_graphs or os.environ.get("IVL_FUSED_DECODE", "1") == "0")
        ):
            return False
        why = (
            "Triton is not installed"
            if not triton_available()
            else f"the model is {self.dtype}, the kernels run bf16"
            if self.dtype != torch.bfloat16
            else ""
        )
        if why and fused:
            raise OptionError(f"fused decode kernels requested but {why}")
        return not why

    # -- tiling --------------------------------------------------------------------------------------------
    def pixel_values_for(self, image, tile_size: int, max_tiles: int, use_thumbnail: bool = True):
        """The engine's tiler: on the model's device when device tiling is on (same values as the CPU path)."""
        if self.tiler is None:
            return pixel_values_for(image, tile_size, max_tiles, use_thumbnail)
        return self.tiler(image, tile_size, max_tiles, use_thumbnail)

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

    def _vit_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
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

    def _vit_attempts(self) -> list[tuple[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]]]:
        attempts = [("compiled", self._vit_function)] if self.compile_vit else []
        return [*attempts, ("eager", lambda: super(FastTorchBackend, self).image_features)]

    def _graph_pool(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _capture_with_vit(self, what: str, body):
        """Capture ``body(vit_fn)`` with the compiled ViT, else the eager one; (graph, output) or None."""
        for mode, vit in self._vit_attempts():
            try:
                fn = vit()
                graph, out = capture(lambda fn=fn: body(fn), warmup=2, pool=self._graph_pool())
            except Exception as exc:  # a failed compile or capture must not break captioning
                log.warning("%s graph capture with the %s ViT failed, falling back: %s", what, mode, exc)
                torch.cuda.synchronize()
                if mode == "compiled":
                    self.compile_vit = False
                continue
            self.vit_mode = mode
            return graph, out
        return None

    def _capture_vit(self, tiles: int, example: torch.Tensor):
        static_in = example.to(self.device, self.dtype).clone()
        captured = self._capture_with_vit(f"ViT ({tiles} tiles)", lambda fn: fn(static_in))
        if captured is None:
            raise RuntimeError(f"could not capture the ViT for {tiles} tiles, eager or compiled")
        self._vit_graphs[tiles] = (captured[0], static_in, captured[1])
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
        if self.use_fused and batch <= self.fused_max_batch:
            from ivl_ros.model.backends.triton_decode import FusedDecoder

            try:
                st.fused = FusedDecoder(self.lm, batch, length, self.device)
            except ValueError as exc:  # a geometry the kernels do not cover: the compiled step runs instead
                log.warning("fused decode kernels not used: %s", exc)
                self.use_fused = False
        self._states[key] = st
        return st

    def _capture_decode(self, st: GreedyState) -> None:
        st.reset(0, 0, 0)
        attempts = []
        fused = st.fused
        if fused is not None:
            attempts.append(("triton+graph", lambda: fused.step(st)))
        if self.use_compile:
            attempts.append(("compiled+graph", lambda: self._step_function()(self.lm, st)))
        attempts.append(("eager+graph", lambda: greedy_step(self.lm, st)))
        for mode, step in attempts:
            try:
                st.graph, _ = capture(step)
                st.mode = mode
                break
            except Exception as exc:  # a failed compile or capture must not break captioning
                log.warning("decode graph capture (%s) failed, falling back: %s", mode, exc)
                torch.cuda.synchronize()
                if mode.startswith("compiled"):
                    self.use_compile = False  # do not pay for a failing compile again on the next state
                if mode.startswith("triton"):
                    st.fused = None
                    self.use_fused = False
        else:
            st.mode = "eager (graph capture failed)"
        self.decode_mode = st.mode

    # -- first token -----------------------------------------------------------------------------------------
    def image_index(self, input_ids: np.ndarray, pixel_values) -> torch.Tensor | None:
        """Flat (row-major) indices of the prompt's image-context positions, checked against the tile count."""
        slots = np.flatnonzero(input_ids.reshape(-1) == self.image_token_id)
        if pixel_values is None:
            if slots.size:
                raise OptionError(f"the prompt has {slots.size} image-context tokens but no image was given")
            return None
        features = int(pixel_values.shape[0]) * self.tokens_per_tile
        if features != slots.size:
            raise OptionError(
                f"image features ({features} tokens) do not match the prompt's {slots.size} image-context tokens"
            )
        return torch.from_numpy(slots).to(self.device)

    def _first_logits(
        self,
        st: GreedyState,
        ids: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        all_valid: bool,
        pixel_values: torch.Tensor | None,
        image_index: torch.Tensor | None,
        vit,
        prefill: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Embed the prompt, put the image features at their positions, prefill ``st``'s cache (with ``prefill``,
        default the eager ``StaticLM.prefill``); last logits."""
        embeds = self.language_model.embed_tokens(ids)
        if pixel_values is not None:
            features = vit(pixel_values)
            flat = embeds.view(-1, embeds.shape[-1])
            flat.index_copy_(0, image_index, features.reshape(-1, features.shape[-1]).to(embeds.dtype))
        hidden = (prefill or self.lm.prefill)(embeds, positions, key_valid, st.cache, all_valid=all_valid)
        return self.lm.lm_head(hidden[:, -1])

    def prefill_logits(
        self,
        st: GreedyState,
        ids: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        all_valid: bool,
        pixel_values: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        graphs: bool = True,
    ) -> torch.Tensor:
        """Image + prompt into ``st``'s cache, the last position's logits (B, V): one graph replay on CUDA.

        The graph's output lives in the shared pool: use it before the next replay of any graph.
        """
        tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
        key = (int(ids.shape[1]), all_valid, tiles)
        graphs = graphs and self.use_graphs and ids.numel() <= PREFILL_GRAPH_TOKENS
        entry = st.prefills.get(key) if graphs else None
        if entry is None and graphs and key not in st.prefills:
            entry = self._capture_prefill(st, key, ids, positions, key_valid, pixel_values, image_index)
        if entry is None:
            return self._first_logits(
                st, ids, positions, key_valid, all_valid, pixel_values, image_index, self.image_features
            )
        graph, inputs, logits = entry
        for dst, src in zip(inputs, (ids, positions, key_valid, pixel_values, image_index), strict=True):
            if src is not None:
                dst.copy_(src, non_blocking=True)
        graph.replay()
        return logits

    def _capture_prefill(
        self,
        st: GreedyState,
        key: tuple[int, bool, int],
        ids: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_index: torch.Tensor | None,
    ):
        while len(st.prefills) >= MAX_PREFILLS:
            st.prefills.pop(next(iter(st.prefills)))
        pv = None if pixel_values is None else pixel_values.to(self.device, self.dtype).clone()
        inputs = (
            ids.clone(),
            positions.clone(),
            key_valid.clone(),
            pv,
            None if image_index is None else image_index.clone(),
        )
        prefill = self._prefill_for(st, key, inputs)
        captured = self._capture_with_vit(
            f"first-token ({key[0]} tokens, {key[2]} tiles)",
            lambda vit: self._first_logits(st, *inputs[:3], key[1], *inputs[3:], vit, prefill),
        )
        if captured is None:  # this length stays eager
            st.prefills[key] = None
            return None
        st.prefills[key] = (captured[0], inputs, captured[1])
        return st.prefills[key]

    def _prefill_for(self, st: GreedyState, key: tuple[int, bool, int], inputs: tuple) -> Callable[..., torch.Tensor]:
        """The prefill the first-token graph of ``key`` captures: the compiled one when asked for and it runs at
        this length (one call outside the capture compiles and checks it; it writes ``st``'s cache, which the
        capture's warm-up overwrites), else the eager one (and compiling stays off after a failure)."""
        self.prefill_mode = "eager"
        if not self.compile_prefill:
            return self.lm.prefill
        try:
            if self._prefill_compiled is None:
                # Static shapes: the graph fixes the length anyway, and each length gets its own kernels.
                self._prefill_compiled = torch.compile(self.lm.prefill, dynamic=False)
            self._prefill_compiled(
                self.language_model.embed_tokens(inputs[0]), inputs[1], inputs[2], st.cache, all_valid=key[1]
            )
        except Exception as exc:  # a failed compile must not break captioning
            log.warning("compiled prefill (%d tokens) failed, the prefill stays eager: %s", key[0], exc)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.compile_prefill = False
            return self.lm.prefill
        self.prefill_mode = "compiled"
        return self._prefill_compiled

    def forget_prefill_graphs(self) -> None:
        """Drop every state's captured first-token graphs (the next prompts re-capture; e.g. after switching
        ``compile_prefill``)."""
        for st in self._states.values():
            st.prefills.clear()

    def run_step(self, st: GreedyState) -> None:
        if st.graph is not None:
            st.graph.replay()
        elif st.fused is not None:
            st.fused.step(st)
        else:
            greedy_step(self.lm, st)

    def session(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None
    ) -> FastSession:
        return FastSession(self, input_ids, attention_mask, pixel_values)


class FastSession:
    """One request on the fast backend: ``generate`` (greedy, on the device) or ``prefill``/``step``."""

    def __init__(
        self,
        backend: FastTorchBackend,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        pixel_values: np.ndarray | None,
    ) -> None:
        self.backend = backend
        self.input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        self.mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        self.pixel_values = pixel_values
        self.state: GreedyState | None = None

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])

    def _prefill(self, st: GreedyState, graphs: bool = False) -> torch.Tensor:
        """Run the image and prompt into ``st``'s cache; returns last-position logits (B, V) on the device.

        ``graphs``: replay/capture the first-token graph; only for the backend's long-lived states, since a
        capture costs two eager runs and would be wasted on a one-off state.
        """
        b = self.backend
        dev = b.device
        ids = torch.from_numpy(self.input_ids).to(dev, non_blocking=True)
        mask = torch.from_numpy(self.mask).to(dev, non_blocking=True).bool()
        positions = torch.from_numpy(upstream_position_ids(self.mask)).to(dev, non_blocking=True)
        image_index = b.image_index(self.input_ids, self.pixel_values)
        pv = None if self.pixel_values is None else torch.as_tensor(self.pixel_values).to(dev, non_blocking=True)
        logits = b.prefill_logits(st, ids, positions, mask, bool(self.mask.all()), pv, image_index, graphs=graphs)
        st.positions.copy_(positions[:, -1] + 1)
        st.slot.fill_(ids.shape[1])
        return logits

    def _check_length(self, tokens: int) -> None:
        if tokens > self.backend.lm.max_positions:
            raise OptionError(
                f"prompt plus new tokens ({tokens}) exceed the model's {self.backend.lm.max_positions} positions"
            )

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
        return [cut_at_stop(row, eos_id) for row in tokens]

    # -- the DecoderSession protocol (sampling, streaming) ------------------------------------------------
    @torch.inference_mode()
    def prefill(self) -> np.ndarray:
        length = self.input_ids.shape[1]
        self._check_length(length + 1)
        self.state = GreedyState.allocate(
            self.backend.lm,
            self.batch,
            cache_length(length + STREAM_SLACK),
            self.backend.device,
            self.backend.dtype,
            self.backend.vocab,
        )
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
            dst[:, :, : old.length] = src
        new.valid[:, : old.length] = old.valid
        st.cache = KVCache(new.keys, new.values, new.valid)
