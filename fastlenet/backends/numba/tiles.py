"""Register-blocked multiply-add tiles for the stride-1 convolutions' sums of shifted input
runs: up to four output rows x three vectors (24 float32 values with AVX2) stay in vector
registers across a whole sum, written as LLVM vector code through Numba's ``@intrinsic``.

Plain Numba loops keep the output row in memory (a load and a store per few multiply-
adds), and LLVM does not turn scalar accumulators into vector registers itself
(docs/performance.md, Numba backend, Convolution). Under NUMBA_DISABLE_JIT the tiles are
plain loops that compute the same sums.
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import serial


def _vector_bytes() -> int:
    """The vector width LLVM gives plain loops on the CPU Numba compiles for: 64 bytes on
    AMD's AVX-512 CPUs (znver4 on), 32 elsewhere (AVX2, and Intel's AVX-512 CPUs, which
    LLVM's tuning keeps on 256-bit vectors). NUMBA_CPU_NAME / _FEATURES apply."""
    import llvmlite.binding as llvm
    from numba.core.codegen import get_host_cpu_features

    name = numba.config.CPU_NAME
    if not name or name == "host":
        name = llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:  # Numba's own reading of the host (NUMBA_ENABLE_AVX applies)
        features = get_host_cpu_features()
    avx512 = "+avx512f" in features.split(",")
    generation = name[len("znver"):] if name.startswith("znver") else ""
    return 64 if avx512 and generation.isdigit() and int(generation) >= 4 else 32


VECTOR_BYTES = _vector_bytes()
TILE_VECTORS = 3   # vectors per output row in a tile: 4 x 3 accumulators + 3 inputs + 1 weight
# terms summed along a whole run before the next ones: the inputs they read stay in L1
# until the tiles a kernel width of images later read them again
CHUNK = 36


def _vector_tile(rows: int, vectors: int, vector_bytes: int = VECTOR_BYTES,
                 accumulate: bool = True):
    """The compiled tile of ``rows`` output rows x ``vectors`` vectors of ``vector_bytes``
    (rows_multiply_add); with ``accumulate`` False, the tile's sums start from
    init[r] and overwrite out (rows_multiply_set)."""

    @intrinsic
    def tile(typingctx, out, obase, ostride, x, xbase, off, w, init):
        sig = types.void(out, types.intp, types.intp, x, types.intp, off, w, init)

        def codegen(context, builder, signature, args):
            out_v, obase_v, ostride_v, x_v, xbase_v, off_v, w_v, init_v = args
            out_t, _, _, x_t, _, off_t, w_t, init_t = signature.args
            out_p = context.make_array(out_t)(context, builder, value=out_v).data
            x_p = context.make_array(x_t)(context, builder, value=x_v).data
            off_a = context.make_array(off_t)(context, builder, value=off_v)
            w_p = context.make_array(w_t)(context, builder, value=w_v).data
            init_p = context.make_array(init_t)(context, builder, value=init_v).data
            terms = cgutils.unpack_tuple(builder, off_a.shape)[0]
            bits = out_t.dtype.bitwidth
            lanes = vector_bytes * 8 // bits
            scalar = context.get_value_type(out_t.dtype)
            vec = ir.VectorType(scalar, lanes)
            intp = context.get_value_type(types.intp)
            # fmuladd: fused where the CPU has FMA, a multiply and an add where it has not
            # (llvm.fma would call the C library's fmaf per lane there)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                f"llvm.fmuladd.v{lanes}f{bits}")
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            undef = ir.Constant(vec, ir.Undefined)

            def broadcast(value):
                return builder.shuffle_vector(
                    builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0)),
                    undef, splat)

            if accumulate:
                starts = [ir.Constant(vec, [ir.Constant(scalar, 0.0)] * lanes)] * rows
            else:
                starts = [broadcast(builder.load(builder.gep(init_p, [ir.Constant(intp, r)])))
                          for r in range(rows)]
            # allocas in the entry block: LLVM promotes them to registers
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)]
                   for _ in range(rows)]
            for r in range(rows):
                for j in range(vectors):
                    builder.store(starts[r], acc[r][j])

            def at(pointer, index):
                return builder.bitcast(builder.gep(pointer, [index]), vec.as_pointer())

            def const(value):
                return ir.Constant(intp, value)

            with cgutils.for_range(builder, terms) as loop:
                t = loop.index
                start = builder.add(xbase_v, builder.load(builder.gep(off_a.data, [t])))
                inputs = [builder.load(at(x_p, builder.add(start, const(j * lanes))), align=1)
                          for j in range(vectors)]
                first = builder.mul(t, const(rows))
                for r in range(rows):
                    weight = broadcast(builder.load(builder.gep(w_p, [builder.add(first,
                                                                                  const(r))])))
                    for j in range(vectors):
                        builder.store(builder.call(fma, [weight, inputs[j],
                                                         builder.load(acc[r][j])]), acc[r][j])
            for r in range(rows):
                row = builder.add(obase_v, builder.mul(ostride_v, const(r)))
                for j in range(vectors):
                    pointer = at(out_p, builder.add(row, const(j * lanes)))
                    total = builder.load(acc[r][j])
                    if accumulate:
                        total = builder.fadd(builder.load(pointer, align=1), total)
                    builder.store(total, pointer, align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _python_tile(rows: int, vectors: int, accumulate: bool = True):
    """The same tile as plain loops, for NUMBA_DISABLE_JIT."""

    def tile(out, obase, ostride, x, xbase, off, w, init):
        for r in range(rows):
            for m in range(vectors * VECTOR_BYTES // out.itemsize):
                acc = 0.0
                for t in range(off.shape[0]):
                    acc += w[t * rows + r] * x[xbase + off[t] + m]
                start = out[obase + r * ostride + m] if accumulate else init[r]
                out[obase + r * ostride + m] = start + acc

    return tile


_make_tile = _python_tile if numba.config.DISABLE_JIT else _vector_tile
tile_4, tile_2, tile_1 = (_make_tile(rows, TILE_VECTORS) for rows in (4, 2, 1))
# one vector wide, for a run's last values short of a whole tile
tail_4, tail_2, tail_1 = (_make_tile(rows, 1) for rows in (4, 2, 1))
# the same, starting from given values and overwriting out
set_tile_4, set_tile_2, set_tile_1 = (_make_tile(rows, TILE_VECTORS, accumulate=False)
                                      for rows in (4, 2, 1))
set_tail_4, set_tail_2, set_tail_1 = (_make_tile(rows, 1, accumulate=False)
                                      for rows in (4, 2, 1))


def _rows_multiply_add(out, obase, ostride, rows, run, x, xbase, off, w):
    """out[obase + r*ostride + m] += sum_t w[t*rows + r] * x[xbase + off[t] + m] for
    r < rows (1, 2 or 4) and m < run, CHUNK terms at a time along the whole run (whole
    tiles, then one-vector tiles, then the run's last values one by one).

    out and x are flat arrays; off holds each term's offset into x (any sign, as long as
    xbase + off[t] + m stays in x) and w the rows' weights term-major (pack_rows).
    """
    rows_sum(out, obase, ostride, rows, run, x, xbase, off, w, w[:0], True)


def _rows_multiply_set(out, obase, ostride, rows, run, x, xbase, off, w, init):
    """out[obase + r*ostride + m] = init[r] + the same sums: rows_multiply_add without
    first filling the rows (the first chunk's tiles start from init and overwrite)."""
    rows_sum(out, obase, ostride, rows, run, x, xbase, off, w, init, False)


def _rows_sum(out, obase, ostride, rows, run, x, xbase, off, w, init, accumulate):
    """rows_multiply_add (``accumulate``) or rows_multiply_set, chunk by chunk."""
    if rows != 1 and rows != 2 and rows != 4:
        raise ValueError("rows_multiply_add: rows must be 1, 2 or 4")
    T = off.shape[0]
    if T == 0 and not accumulate:
        fill_rows(out, obase, ostride, rows, run, init)
    for t0 in range(0, T, CHUNK):
        t1 = min(t0 + CHUNK, T)
        rows_sum_terms(out, obase, ostride, rows, run, x, xbase, off[t0:t1],
                       w[t0 * rows:t1 * rows], init, accumulate or t0 > 0)


def _rows_sum_terms(out, obase, ostride, rows, run, x, xbase, off, w, init, accumulate):
    """All the given terms in one pass along the run (rows_sum's chunk; called directly
    where the inputs of every term stay in L1 anyway): added to out, or (``accumulate``
    False) from init[r] into out."""
    lanes = VECTOR_BYTES // out.itemsize
    width = TILE_VECTORS * lanes
    full = run - run % width
    vectors = run - run % lanes
    if rows == 4 and accumulate:
        for m in range(0, full, width):
            tile_4(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            tail_4(out, obase + m, ostride, x, xbase + m, off, w, init)
    elif rows == 4:
        for m in range(0, full, width):
            set_tile_4(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            set_tail_4(out, obase + m, ostride, x, xbase + m, off, w, init)
    elif rows == 2 and accumulate:
        for m in range(0, full, width):
            tile_2(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            tail_2(out, obase + m, ostride, x, xbase + m, off, w, init)
    elif rows == 2:
        for m in range(0, full, width):
            set_tile_2(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            set_tail_2(out, obase + m, ostride, x, xbase + m, off, w, init)
    elif accumulate:
        for m in range(0, full, width):
            tile_1(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            tail_1(out, obase + m, ostride, x, xbase + m, off, w, init)
    else:
        for m in range(0, full, width):
            set_tile_1(out, obase + m, ostride, x, xbase + m, off, w, init)
        for m in range(full, vectors, lanes):
            set_tail_1(out, obase + m, ostride, x, xbase + m, off, w, init)
    for r in range(rows):
        for m in range(vectors, run):
            acc = out[obase + r * ostride + m] if accumulate else init[r]
            for t in range(off.shape[0]):
                acc += w[t * rows + r] * x[xbase + off[t] + m]
            out[obase + r * ostride + m] = acc


def _fill_rows(out, obase, ostride, rows, run, values):
    """out[obase + r*ostride + m] = values[r] for r < rows and m < run: rows that no term
    reaches (rows_multiply_set sets the others). A loop of its own: slice assignments in
    the callers' parallel loops slowed their tiles (docs/performance.md, Convolution)."""
    for r in range(rows):
        value = values[r]
        for m in range(run):
            out[obase + r * ostride + m] = value


def _row_blocks(K):
    """How many row blocks K rows make: as many 4s as fit, then a 2, then a 1."""
    left = K % 4
    return K // 4 + left // 2 + left % 2


def _row_block(b, K):
    """Block b's first row and its number of rows (4, 2 or 1)."""
    if b < K // 4:
        return 4 * b, 4
    k0 = K - K % 4
    if b == K // 4 and K % 4 >= 2:
        return k0, 2
    return K - 1, 1


def _pack_rows(w, packed):
    """packed[k0*T + t*rows + r] = w[k0 + r, t] for each row block (k0, rows) of w (K, T):
    a tile's weights for one term sit side by side."""
    K, T = w.shape
    for b in range(row_blocks(K)):
        k0, rows = row_block(b, K)
        for t in range(T):
            for r in range(rows):
                packed[k0 * T + t * rows + r] = w[k0 + r, t]


fill_rows = serial(_fill_rows)
rows_sum_terms = serial(_rows_sum_terms)
rows_sum = serial(_rows_sum)
rows_multiply_add = serial(_rows_multiply_add)
rows_multiply_set = serial(_rows_multiply_set)
row_blocks = serial(_row_blocks)
row_block = serial(_row_block)
pack_rows = serial(_pack_rows)
