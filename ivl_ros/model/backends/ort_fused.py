"""The fused decoder graph (export/fused_decoder.py) in ONNX Runtime: a static KV cache that stays on the
device and is updated in place, greedy choice on the device, and CUDA graphs. Imports no torch.

How a request runs (one :class:`CacheState` per (batch, capacity), reused across requests like
torch-fast's states, so a robot's steady stream of same-sized requests reuses buffers and graphs):

* the KV cache is one device buffer per layer and kind, [batch, kv_heads, capacity, head_dim], bound as
  both the past input and the present output; GroupQueryAttention writes each new key/value in place;
* the prompt runs right-padded (the graph's convention: row b fills slots 0..len_b-1), which gives the
  real tokens the same positions as upstream's left padding, so the logits are the same function;
* every decode step reuses one I/O binding whose device buffers never move: the host writes the next
  token's embedding row (8 KB) and the row lengths, the graph returns the two best token ids; the host
  reads those 16 bytes per row and nothing else (``min_new_tokens`` takes the second when the first is
  the stop token, which is exactly the argmax with the stop token masked);
* on CUDA each state's step is captured once as a CUDA graph (ORT's ``gpu_graph_id``) and replayed; the
  prompt runs outside graphs (``gpu_graph_id`` -1). A step is idempotent (same inputs, same cache slot),
  so the extra runs ORT makes while capturing change nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ivl_ros.errors import OptionError
from ivl_ros.model.backends.engines import EngineError
from ivl_ros.model.backends.onnx_backend import cuda_graphs_wanted, device_id, make_session
from ivl_ros.model.generation import GenerationSettings, generate

if TYPE_CHECKING:
    from onnxruntime import IOBinding, OrtValue

log = logging.getLogger(__name__)

CACHE_QUANTUM = 256  # capacities are rounded up to this, so a few states serve every prompt
STREAM_SLACK = 1024  # room for new tokens when the length is not known up front (prefill/step use)
MAX_STATES = 3  # (batch, capacity) states kept, each with its KV cache and CUDA graph
ONNX_TYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(bfloat16)": 16}  # onnx.TensorProto values


def cache_capacity(tokens: int, limit: int) -> int:
    capacity = max(CACHE_QUANTUM, -(-tokens // CACHE_QUANTUM) * CACHE_QUANTUM)
    return min(capacity, limit)


@dataclass
class CacheState:
    """The device buffers of one (batch, capacity): KV cache, step inputs and outputs, the step's binding."""

    batch: int
    capacity: int
    kv: list[OrtValue]
    embeds: OrtValue  # (batch, 1, hidden) float32, the fed token's embedding
    seqlens: OrtValue  # (batch,) int32, tokens in each row's cache minus 1
    total: OrtValue  # () int32 in host memory (GroupQueryAttention reads it on the host)
    index: OrtValue  # (batch, 1) int64, zeros: a step's logits come from its only position
    logits: OrtValue  # (batch, vocab) float32
    top: OrtValue  # (batch, 2) int64
    binding: IOBinding  # the decode step's, bound once
    graph_id: int | None = None
    lengths: np.ndarray | None = None  # host copy: tokens in each row's cache


class FusedDecoder:
    """One session of the fused graph and its cache states."""

    fused = True

    def __init__(
        self,
        path: Path,
        providers: list[str],
        device: str = "cpu",
        max_positions: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.on_cuda = providers[0] == "CUDAExecutionProvider"
        self.device_type = "cuda" if self.on_cuda else "cpu"
        self.device_id = device_id(device) if self.on_cuda else 0
        self.path, self.providers, self.device = path, providers, device
        want_graphs = self.on_cuda and (cuda_graphs_wanted() if cuda_graphs is None else cuda_graphs)
        self.graph_note = "" if want_graphs else "off"
        try:
            self.session = make_session(path, providers, device, cuda_graph=want_graphs)
        except Exception as exc:  # e.g. a node ONNX Runtime would put on the CPU: graphs impossible, plain runs work
            if not want_graphs:
                raise
            log.warning("CUDA graphs refused for %s (%s); decoding without them", path, exc)
            self.graph_note = f"refused at session creation: {exc}"
            want_graphs = False
            self.session = make_session(path, providers, device)
        self.cuda_graphs = want_graphs
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_type = ONNX_TYPES[first.type]
        self.hidden = int(inputs["inputs_embeds"].shape[2])
        self.vocab = int(outputs["logits"].shape[1])
        self.max_positions = int(max_positions or 32768)
        self.states: OrderedDict[tuple[int, int], CacheState] = OrderedDict()
        self._graph_ids = 0
        import onnxruntime as ort

        self._prompt_options = ort.RunOptions()
        if want_graphs:
            self._prompt_options.add_run_config_entry("gpu_graph_id", "-1")  # prompts run outside graphs
        self._step_options: dict[int, object] = {}

    # -- buffers -------------------------------------------------------------------------------------------
    def _device_value(self, array: np.ndarray) -> OrtValue:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)

    def state(self, batch: int, capacity: int) -> CacheState:
        """The reusable state (and CUDA graph) for a batch and cache capacity; allocated on first use."""
        key = (batch, capacity)
        st = self.states.get(key)
        if st is not None:
            self.states.move_to_end(key)
            return st
        while len(self.states) >= MAX_STATES:
            self.states.popitem(last=False)
        st = self.allocate(batch, capacity, graph=self.cuda_graphs)
        self.states[key] = st
        return st

    def allocate(self, batch: int, capacity: int, graph: bool = False) -> CacheState:
        """A new state with its buffers bound; ``graph``: its decode step is captured and replayed."""
        import onnxruntime as ort

        kv = [
            ort.OrtValue.ortvalue_from_shape_and_type(
                [batch, self.kv_heads, capacity, self.head_dim], self.kv_type, self.device_type, self.device_id
            )
            for _ in self.past_names
        ]
        st = CacheState(
            batch,
            capacity,
            kv,
            embeds=self._device_value(np.zeros((batch, 1, self.hidden), np.float32)),
            seqlens=self._device_value(np.zeros(batch, np.int32)),
            total=ort.OrtValue.ortvalue_from_numpy(np.array(capacity, np.int32)),
            index=self._device_value(np.zeros((batch, 1), np.int64)),
            logits=self._device_value(np.zeros((batch, self.vocab), np.float32)),
            top=self._device_value(np.zeros((batch, 2), np.int64)),
            binding=self.session.io_binding(),
        )
        self._bind_step(st)
        if graph and self.cuda_graphs:
            self._graph_ids += 1
            st.graph_id = self._graph_ids
        return st

    def _bind_step(self, st: CacheState) -> None:
        b = st.binding
        b.bind_ortvalue_input("inputs_embeds", st.embeds)
        b.bind_ortvalue_input("seqlens_k", st.seqlens)
        b.bind_ortvalue_input("total_sequence_length", st.total)
        b.bind_ortvalue_input("logits_index", st.index)
        self._bind_cache_and_outputs(b, st)

    def _bind_cache_and_outputs(self, binding: IOBinding, st: CacheState) -> None:
        binding.bind_ortvalue_output("logits", st.logits)
        binding.bind_ortvalue_output("top_ids", st.top)
        for past, present, value in zip(self.past_names, self.present_names, st.kv, strict=True):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: updated in place

    def _options(self, st: CacheState):
        if st.graph_id is None:
            return None
        opts = self._step_options.get(st.graph_id)
        if opts is None:
            import onnxruntime as ort

            opts = ort.RunOptions()
            opts.add_run_config_entry("gpu_graph_id", str(st.graph_id))
            self._step_options[st.graph_id] = opts
        return opts

    # -- running -------------------------------------------------------------------------------------------
    def prefill(self, st: CacheState, embeds: np.ndarray, lengths: np.ndarray) -> None:
        """Right-padded prompt rows (batch, seq, hidden) with ``lengths`` real tokens each, into ``st``'s cache."""
        seq = int(embeds.shape[1])
        if seq > st.capacity:
            raise EngineError(f"prompt of {seq} tokens exceeds the KV cache capacity {st.capacity}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        binding.bind_cpu_input("seqlens_k", (lengths - 1).astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(seq, np.int32))
        binding.bind_cpu_input("logits_index", (lengths - 1).astype(np.int64)[:, None])
        self._bind_cache_and_outputs(binding, st)
        self.session.run_with_iobinding(binding, self._prompt_options)
        st.lengths = lengths.astype(np.int64).copy()

    def step(self, st: CacheState, embeds: np.ndarray) -> None:
        """Feed one token per row ((batch, 1, hidden) embeddings) at each row's next cache slot."""
        assert st.lengths is not None, "prefill() first"
        if int(st.lengths.max()) >= st.capacity:
            raise EngineError(f"KV cache capacity {st.capacity} exhausted")
        st.embeds.update_inplace(np.ascontiguousarray(embeds, np.float32))
        st.lengths += 1
        st.seqlens.update_inplace((st.lengths - 1).astype(np.int32))
        if st.graph_id is None:
            # Without graphs the attention bound is the real longest row; a graph keeps the capacity it captured.
            st.total.update_inplace(np.array(int(st.lengths.max()), np.int32))
        try:
            self.session.run_with_iobinding(st.binding, self._options(st))
        except Exception as exc:
            if st.graph_id is None:
                raise
            # A capture or replay that fails: the same step again without graphs (it is idempotent).
            self._drop_graphs(f"{type(exc).__name__}: {exc}")
            st.total.update_inplace(np.array(int(st.lengths.max()), np.int32))
            self.session.run_with_iobinding(st.binding)

    def _drop_graphs(self, reason: str) -> None:
        """A new session without CUDA graphs; every state keeps its device buffers (they are not the session's)."""
        log.warning("CUDA graph capture/replay failed (%s); decoding without graphs from now on", reason)
        self.graph_note = f"failed at run time: {reason}"
        self.cuda_graphs = False
        self.session = make_session(self.path, self.providers, self.device)
        import onnxruntime as ort

        self._prompt_options = ort.RunOptions()
        for st in self.states.values():
            st.graph_id = None
            st.binding = self.session.io_binding()
            self._bind_step(st)

    def greedy(self, embeds: np.ndarray, table: np.ndarray, new_tokens: int) -> tuple[list[int], np.ndarray]:
        """A bare greedy loop for one unpadded row (quantisation measurements): tokens and first logits."""
        lengths = np.array([embeds.shape[1]])
        st = self.state(1, cache_capacity(embeds.shape[1] + new_tokens, self.max_positions))
        self.prefill(st, embeds, lengths)
        first, tokens = st.logits.numpy()[0].copy(), []
        for _ in range(new_tokens):
            nxt = int(st.top.numpy()[0, 0])
            tokens.append(nxt)
            self.step(st, table[np.array([[nxt]])])
        return tokens, first


class FusedSession:
    """One request on the fused decoder: ``generate`` (greedy on the device) or ``prefill``/``step``."""

    def __init__(
        self, backend, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None
    ) -> None:
        self.backend = backend
        self.decoder: FusedDecoder = backend.decoder
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        self.lengths = mask.sum(axis=1)
        width = mask.shape[1]
        for row, length in enumerate(self.lengths.tolist()):
            if length == 0 or not mask[row, width - length :].all():
                raise OptionError(
                    f"row {row}: the fused decoder takes left-padded rows (padding, then "
                    f"{length} tokens) with at least one token"
                )
        self.pixel_values = pixel_values
        self.state: CacheState | None = None
        self._prompt: np.ndarray | None = None  # right-padded prompt embeddings (kept to re-prefill when growing)
        self._fed: list[np.ndarray] = []  # token ids fed after the prompt, one (batch,) array per step

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])

    def _right_padded_embeds(self) -> np.ndarray:
        left = self.backend.embed_prompt(self.input_ids, self.pixel_values)
        width = left.shape[1]
        if (self.lengths == width).all():  # no padding (every batch-1 request): left is right
            return left
        right = np.zeros_like(left)
        for row, length in enumerate(self.lengths.tolist()):
            right[row, :length] = left[row, width - length :]
        return right[:, : int(self.lengths.max())]

    def _start(self, new_tokens: int, reused: bool) -> CacheState:
        """Prefill into a state with room for ``new_tokens``; ``reused``: one of the decoder's kept states."""
        tokens = int(self.lengths.max()) + new_tokens
        if tokens > self.decoder.max_positions:
            raise OptionError(
                f"prompt plus new tokens ({tokens}) exceed the model's {self.decoder.max_positions} positions"
            )
        capacity = cache_capacity(tokens, self.decoder.max_positions)
        # A one-off state (streaming) must not evict a state that another request captured a graph for.
        st = self.decoder.state(self.batch, capacity) if reused else self.decoder.allocate(self.batch, capacity)
        self._prompt = self._right_padded_embeds()
        self._fed = []
        self.decoder.prefill(st, self._prompt, self.lengths)
        return st

    def _feed(self, next_ids: np.ndarray) -> None:
        ids = np.asarray(next_ids, dtype=np.int64)
        self._fed.append(ids)
        assert self.state is not None and self.state.lengths is not None, "prefill() first"
        if int(self.state.lengths.max()) >= self.state.capacity:
            self._grow()
        else:
            self.decoder.step(self.state, self.backend.embedding[ids][:, None, :])

    def _grow(self) -> None:
        """A full cache (streaming past its slack): prefill prompt + every fed token into a state twice as big."""
        assert self.state is not None and self._prompt is not None, "prefill() first"
        fed = np.stack(self._fed, axis=1)  # (batch, tokens fed so far)
        lengths = self.lengths + fed.shape[1]
        if int(lengths.max()) > self.decoder.max_positions:
            raise OptionError(f"prompt plus new tokens exceed the model's {self.decoder.max_positions} positions")
        width = int(lengths.max())
        embeds = np.zeros((self.batch, width, self._prompt.shape[2]), np.float32)
        for row, length in enumerate(self.lengths.tolist()):
            embeds[row, :length] = self._prompt[row, :length]
            embeds[row, length : length + fed.shape[1]] = self.backend.embedding[fed[row]]
        capacity = cache_capacity(min(2 * self.state.capacity, self.decoder.max_positions), self.decoder.max_positions)
        self.state = self.decoder.allocate(self.batch, capacity)
        self.decoder.prefill(self.state, embeds, lengths)

    def generate(self, settings: GenerationSettings, eos_id: int, pad_id: int) -> list[list[int]]:
        """Token ids per row with ``generation.generate``'s semantics; greedy reads two ids per row per step."""
        settings = settings.validated()
        n = settings.max_new_tokens
        if settings.do_sample:
            self.state = self._start(n, reused=False)
            return generate(self, self.batch, settings, eos_id, pad_id)
        self.state = self._start(n, reused=True)
        outputs: list[list[int]] = [[] for _ in range(self.batch)]
        finished = np.zeros(self.batch, dtype=bool)
        for step in range(n):
            top = self.state.top.numpy()
            nxt = top[:, 0]
            if step < settings.min_new_tokens:
                nxt = np.where(nxt == eos_id, top[:, 1], nxt)
            nxt = np.where(finished, pad_id, nxt)
            for row in np.flatnonzero(~finished):
                outputs[row].append(int(nxt[row]))
            finished |= nxt == eos_id
            if finished.all() or step == n - 1:
                break
            self._feed(nxt)
        return outputs

    # -- the DecoderSession protocol (sampling, streaming) ----------------------------------------------------
    def prefill(self) -> np.ndarray:
        if self.state is None:  # generate() with sampling has prefilled a state of the right size already
            self.state = self._start(STREAM_SLACK, reused=False)
        return self.state.logits.numpy()

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        self._feed(next_ids)
        assert self.state is not None, "prefill() first"
        return self.state.logits.numpy()
