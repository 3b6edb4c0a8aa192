"""A training step recorded once as a CUDA graph and replayed (CupyBackend.capture_step).

A replay launches the whole step (forward, loss, backward, optimizer update) in one call,
so a step costs its kernels' time rather than one Python dispatch per kernel. What the
recording bakes in, and how the host keeps it valid, is ``Backend.capture_step``'s
contract; this module is the CuPy side of it.
"""

from __future__ import annotations

import sys

import cupy


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _print_line(message: str) -> None:
    print(f"fastlenet: {message}", file=sys.stderr, flush=True)


class _Recording:
    """One CUDA graph of a step: its static inputs, its outputs, and every memory block
    allocated while it was recorded (the graph reads and writes them on every replay,
    so they are never handed back to the pool while the graph lives)."""

    def __init__(self, graph, inputs: list, outputs: tuple, blocks: list):
        self.graph, self.inputs, self.outputs, self.blocks = graph, inputs, outputs, blocks

    def replay(self, inputs) -> tuple:
        stream = cupy.cuda.get_current_stream()
        for static, new in zip(self.inputs, inputs):
            static[...] = new
        self.graph.launch(stream)
        return self.outputs


class CapturedStep:
    """``step(*inputs)`` recorded once per input signature in a CUDA graph, then replayed.

    For each new (shape, dtype) signature of the inputs: the first call runs ``step``
    normally but on the capture stream with the private memory pool (CuPy compiles its
    own kernels, and the pool's free list of that stream fills with the blocks the
    recording then reuses: CuPy's pool keeps one free list per stream); the second call
    records it on the capture stream into a graph, with static copies of the inputs;
    every call from then on copies its inputs into those static arrays and replays the
    graph on the current stream, returning the outputs recorded (overwritten by the next
    call, so a caller keeps a copy of what it keeps). Work on the capture stream is
    ordered after the current stream's earlier work and before its later work by events.

    Memory: every block allocated while recording is held by its recording until the
    recording is dropped, as PyTorch's graph pools do, so no block the graph uses is
    ever free: not for another array, and not for the pool's ``free_all_blocks`` (which
    CuPy's out-of-memory retry calls) to hand back to the driver.

    Host values: ``signature()`` (see ``Backend.capture_step``) is read before every call;
    when it changes, every recording is dropped and the next calls record anew; when it
    is None, the call runs as plain Python.

    Failures: an error while recording ends the capture, keeps the step's own error
    (not the void capture's), prints one line naming it, and runs that input shape
    uncaptured from then on (a genuine error of the step then raises from that run).
    """

    def __init__(self, step, signature, log=_print_line):
        self.step = step
        self.signature = signature
        self.log = log
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.warm: set = set()          # input shapes run once on the capture stream
        self.graphs: dict = {}          # input shapes -> _Recording
        self.uncapturable: dict = {}    # input shapes -> why recording failed
        self._signature = None          # the signature the recordings were made with
        self._owned: list | None = None  # while recording: every block allocated

    def __call__(self, *inputs):
        signature = self.signature()
        shapes = tuple((a.shape, a.dtype.str) for a in inputs)
        if signature is None or shapes in self.uncapturable:
            return self.step(*inputs)
        if signature != self._signature:
            self._drop()
            self._signature = signature
        recording = self.graphs.get(shapes)
        if recording is None:
            if shapes not in self.warm:
                self.warm.add(shapes)
                return self._on_capture_stream(lambda: self.step(*inputs))
            try:
                recording = self.graphs[shapes] = self._record(inputs)
            except Exception as exc:
                self.uncapturable[shapes] = why = first_line(exc)
                self.log(f"cupy: a step with inputs {[a.shape for a in inputs]} could not be "
                         f"recorded as a CUDA graph ({why}); running it uncaptured")
                return self.step(*inputs)
        return recording.replay(inputs)

    def _malloc(self, size: int):
        memory = self.pool.malloc(size)
        if self._owned is not None:
            self._owned.append(memory)
        return memory

    def _on_capture_stream(self, run):
        """``run()`` with the capture stream current and the private pool allocating,
        after the work queued on the current stream and before the work queued there next."""
        current = cupy.cuda.get_current_stream()
        self.stream.wait_event(current.record())
        with cupy.cuda.using_allocator(self._malloc), self.stream:
            result = run()
        current.wait_event(self.stream.record())
        return result

    def _record(self, inputs) -> _Recording:
        def capture():
            static = [cupy.empty_like(a) for a in inputs]
            blocks: list = []
            self.stream.begin_capture()
            self._owned = blocks
            try:
                outputs = self.step(*static)
            except BaseException:
                self._owned = None
                try:
                    self.stream.end_capture()
                except Exception:
                    pass  # the capture is void; the step's own error says why
                raise
            self._owned = None
            return _Recording(self.stream.end_capture(), static, outputs, blocks)
        return self._on_capture_stream(capture)

    def _drop(self) -> None:
        """Forget every recording (their blocks go back to the private pool) once no
        replay queued on the current stream can still use them."""
        if self.graphs:
            cupy.cuda.get_current_stream().synchronize()
        self.graphs.clear()
        self.warm.clear()
