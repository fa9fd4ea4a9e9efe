/*
 * OpenCL C kernels for the reference VLA network (vla_accel/models/network.py), fp32.
 *
 * The host side (vla_accel/backends/opencl_backend.py) strings these together into one forward
 * pass; every buffer is allocated once for options.max_batch, so nothing is allocated per frame.
 *
 * Tensor layout: activations are row-major matrices of "rows" x "width" floats. The fusion
 * transformer's sequence buffer holds B x T rows (row b*T + t is token t of sample b) of width D.
 *
 * Compile-time constants (passed as -D build options by the host):
 *   TILE      edge of the square work-group of the GEMM kernels (16 by default: 256 work-items)
 *   WPT       outputs per work-item along each axis in `linear_blocked` (4 by default)
 *   QB        queries per work-group in `attention_blocked` (16 by default)
 *   ATT_WG    work-items per work-group in `attention_blocked` (64 by default; a multiple of QB)
 *
 * Kernels, in the order one forward pass uses them: im2col_patches, linear (patch embedding),
 * add_positions, embed_tokens, linear (state), broadcast_rows (action queries), key_bias; per block
 * layer_norm, linear (qkv), attention_blocked / attention, linear (proj + residual), layer_norm,
 * linear (fc1 + GELU), linear (fc2 + residual); layer_norm and linear + tanh on the action queries.
 * Each `linear` launch is `linear` or `linear_blocked`, whichever suits its size on the device.
 *
 * Written for OpenCL C 1.2 so the same source builds on PoCL, NVIDIA, Mali and (offline, with
 * aoc / v++) FPGA toolchains: no 2.0 features, no extensions, no printf.
 */

#ifndef TILE
#define TILE 16
#endif
#ifndef WPT
#define WPT 4
#endif
#define BLOCK (TILE * WPT)

/* Epilogue selectors shared with the host (OpenCLBackend.ACT_*). */
#define ACT_NONE 0
#define ACT_GELU_TANH 1
#define ACT_TANH 2

/* GELU, tanh form, exactly as torch.nn.functional.gelu(x, approximate="tanh"):
 * 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))). */
inline float gelu_tanh(float x)
{
    const float k_sqrt_2_over_pi = 0.7978845608028654f;
    float inner = k_sqrt_2_over_pi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanh(inner));
}

/* Map a logical row m of an operand onto its physical row in a buffer.
 * Operands are groups of `rows_per_group` consecutive logical rows (one group per sample); group g
 * starts at physical row g * group_stride + row_offset. With rows_per_group = M, group_stride = 0
 * and row_offset = 0 this is the identity. It lets one GEMM read e.g. only the action-query rows
 * of every sample, or write patch embeddings straight into their place in the sequence buffer,
 * instead of copying rows around with extra kernels. */
inline int map_row(int m, int rows_per_group, int group_stride, int row_offset)
{
    return (m / rows_per_group) * group_stride + row_offset + (m % rows_per_group);
}

/*
 * linear: C[m, n] = act(sum_k A[m, k] * W[n, k] + bias[n]) (+ C[m, n] when accumulate != 0)
 *
 * W is a torch nn.Linear weight ([out_features, in_features], row-major), so this is A @ W^T,
 * used for every linear layer and (after im2col) for the patch-embedding convolution.
 * `accumulate` adds the result onto what C already holds: the transformer's residual
 * connection x = x + f(x) is then one kernel with C = x (each element is read and written by the
 * same work-item, so the in-place update is race-free).
 *
 * Work-group layout: TILE x TILE work-items; work-item (i, j) computes C[row0 + j, col0 + i].
 * Each step stages one TILE x TILE tile of A and one of W in local memory, so every global value
 * is read once per tile instead of TILE times. Both tile loads are coalesced along k (the
 * contiguous axis of A and of W). W's tile is stored transposed (w_tile[k][n]) so that in the
 * inner loop neighbouring work-items read neighbouring words: conflict-free on GPUs and a plain
 * vector load for CPU implementations (PoCL) that vectorise across work-items. The one extra
 * column of padding keeps the transposing store from hitting a single bank.
 * Global size: (ceil(N / TILE) * TILE, ceil(M / TILE) * TILE); out-of-range work-items load zeros
 * and skip the store, so any M, N, K works.
 */
__kernel void linear(
    __global const float *A, int a_rows_per_group, int a_group_stride, int a_row_offset, int lda,
    __global const float *W,
    __global const float *bias,
    __global float *C, int c_rows_per_group, int c_group_stride, int c_row_offset, int ldc,
    int M, int N, int K, int activation, int accumulate)
{
    __local float a_tile[TILE][TILE];
    __local float w_tile[TILE][TILE + 1];

    const int local_col = get_local_id(0);
    const int local_row = get_local_id(1);
    const int n = get_group_id(0) * TILE + local_col;      /* output column of this work-item */
    const int m = get_group_id(1) * TILE + local_row;      /* output row of this work-item */
    /* The W row this work-item loads into the tile (one of the TILE output columns of the group). */
    const int w_load_row = get_group_id(0) * TILE + local_row;

    const int a_row = (m < M) ? map_row(m, a_rows_per_group, a_group_stride, a_row_offset) : 0;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        const int k = k0 + local_col;
        a_tile[local_row][local_col] = (m < M && k < K) ? A[a_row * lda + k] : 0.0f;
        w_tile[local_col][local_row] = (w_load_row < N && k < K) ? W[w_load_row * K + k] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) {
            acc += a_tile[local_row][kk] * w_tile[kk][local_col];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (m >= M || n >= N) {
        return;
    }
    float value = acc + bias[n];
    if (activation == ACT_GELU_TANH) {
        value = gelu_tanh(value);
    } else if (activation == ACT_TANH) {
        value = tanh(value);
    }
    const int c_index = map_row(m, c_rows_per_group, c_group_stride, c_row_offset) * ldc + n;
    if (accumulate) {
        value += C[c_index];
    }
    C[c_index] = value;
}

/*
 * linear_blocked: the same function as `linear` (same arguments), for large GEMMs.
 *
 * Each work-group of TILE x TILE work-items computes a BLOCK x BLOCK block of C (BLOCK = TILE * WPT)
 * and each work-item a WPT x WPT grid of it: rows local_row + i * TILE and columns
 * local_col + j * TILE, i, j < WPT (strided, so that neighbouring work-items still touch
 * neighbouring columns and the stores coalesce). Per k step a work-item reads WPT values of A and WPT
 * of W from local memory and does WPT * WPT multiply-adds on registers: WPT times fewer local-memory
 * reads per multiply-add than `linear`, which is what limits that kernel on GPUs, and a small dense
 * register block that CPU implementations vectorise well. The price is WPT^2 fewer work-groups, so the
 * host uses this kernel only when there are enough blocks to fill every compute unit.
 * Global size: (ceil(N / BLOCK) * TILE, ceil(M / BLOCK) * TILE); local size: (TILE, TILE).
 */
__kernel void linear_blocked(
    __global const float *A, int a_rows_per_group, int a_group_stride, int a_row_offset, int lda,
    __global const float *W,
    __global const float *bias,
    __global float *C, int c_rows_per_group, int c_group_stride, int c_row_offset, int ldc,
    int M, int N, int K, int activation, int accumulate)
{
    __local float a_tile[BLOCK][TILE];       /* a_tile[m][k] */
    __local float w_tile[TILE][BLOCK + 1];   /* w_tile[k][n], transposed on load, padded */

    const int local_col = get_local_id(0);
    const int local_row = get_local_id(1);
    const int block_n = get_group_id(0) * BLOCK;
    const int block_m = get_group_id(1) * BLOCK;

    int a_rows[WPT];
    for (int i = 0; i < WPT; ++i) {
        const int m = block_m + local_row + i * TILE;
        a_rows[i] = (m < M) ? map_row(m, a_rows_per_group, a_group_stride, a_row_offset) : -1;
    }
    float acc[WPT][WPT];
    for (int i = 0; i < WPT; ++i) {
        for (int j = 0; j < WPT; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < K; k0 += TILE) {
        const int k = k0 + local_col;
        for (int i = 0; i < WPT; ++i) {
            a_tile[local_row + i * TILE][local_col] = (a_rows[i] >= 0 && k < K) ? A[a_rows[i] * lda + k] : 0.0f;
            const int n = block_n + local_row + i * TILE;
            w_tile[local_col][local_row + i * TILE] = (n < N && k < K) ? W[n * K + k] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) {
            float a_reg[WPT];
            float w_reg[WPT];
            for (int i = 0; i < WPT; ++i) {
                a_reg[i] = a_tile[local_row + i * TILE][kk];
                w_reg[i] = w_tile[kk][local_col + i * TILE];
            }
            for (int i = 0; i < WPT; ++i) {
                for (int j = 0; j < WPT; ++j) {
                    acc[i][j] += a_reg[i] * w_reg[j];
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < WPT; ++i) {
        const int m = block_m + local_row + i * TILE;
        if (m >= M) {
            continue;
        }
        const int c_row = map_row(m, c_rows_per_group, c_group_stride, c_row_offset) * ldc;
        for (int j = 0; j < WPT; ++j) {
            const int n = block_n + local_col + j * TILE;
            if (n >= N) {
                continue;
            }
            float value = acc[i][j] + bias[n];
            if (activation == ACT_GELU_TANH) {
                value = gelu_tanh(value);
            } else if (activation == ACT_TANH) {
                value = tanh(value);
            }
            if (accumulate) {
                value += C[c_row + n];
            }
            C[c_row + n] = value;
        }
    }
}

/*
 * im2col_patches: unfold an NCHW image batch into one row per non-overlapping patch.
 *
 * out[b * P + p, c * S * S + y * S + x] = image[b, c, py * S + y, px * S + x]
 * with P = grid_h * grid_w patches (p = py * grid_w + px) and S = patch_size. The column order
 * (c, y, x) is the memory order of a torch Conv2d weight [D, C, S, S], so the convolution with
 * kernel = stride = S becomes `linear` with W = conv weight viewed as [D, C * S * S].
 * Global size: (C * S * S, batch * P); one work-item per output element, consecutive work-items
 * write consecutive floats of a row.
 */
__kernel void im2col_patches(
    __global const float *image, __global float *out,
    int channels, int height, int width, int patch_size, int grid_w, int patches)
{
    const int col = get_global_id(0);
    const int row = get_global_id(1);
    const int patch_len = channels * patch_size * patch_size;
    if (col >= patch_len) {
        return;
    }
    const int b = row / patches;
    const int p = row % patches;
    const int py = p / grid_w;
    const int px = p % grid_w;
    const int c = col / (patch_size * patch_size);
    const int y = (col / patch_size) % patch_size;
    const int x = col % patch_size;
    const int src = ((b * channels + c) * height + py * patch_size + y) * width + px * patch_size + x;
    out[row * patch_len + col] = image[src];
}

/*
 * add_positions: seq[b, offset + t, :] += positions[t, :] for t < count (learned position
 * embeddings of one camera's patches, added after the patch GEMM wrote the rows in place).
 * Global size: (D, count, batch).
 */
__kernel void add_positions(
    __global float *seq, __global const float *positions,
    int seq_len, int offset, int count, int width)
{
    const int d = get_global_id(0);
    const int t = get_global_id(1);
    const int b = get_global_id(2);
    if (d >= width || t >= count) {
        return;
    }
    seq[(b * seq_len + offset + t) * width + d] += positions[t * width + d];
}

/*
 * embed_tokens: instruction tokens into the sequence,
 * seq[b, offset + t, :] = table[tokens[b, t], :] + positions[t, :]
 * (padded tokens keep their rows, as in the torch network; they are masked as keys in attention,
 * see key_bias; ``mask`` is unused here). Token ids are range-checked on the host before upload; the clamp below only keeps
 * a bad id from reading outside the table.
 * Global size: (D, max_tokens, batch).
 */
__kernel void embed_tokens(
    __global const int *tokens, __global const float *mask,
    __global const float *table, __global const float *positions, int vocab_size,
    __global float *seq, int seq_len, int offset, int max_tokens, int width)
{
    const int d = get_global_id(0);
    const int t = get_global_id(1);
    const int b = get_global_id(2);
    if (d >= width || t >= max_tokens) {
        return;
    }
    int id = tokens[b * max_tokens + t];
    id = clamp(id, 0, vocab_size - 1);
    seq[(b * seq_len + offset + t) * width + d] = table[id * width + d] + positions[t * width + d];
}

/*
 * broadcast_rows: seq[b, offset + t, :] = rows[t, :] for t < count, for every sample b
 * (the learned action-query tokens, identical for every sample).
 * Global size: (D, count, batch).
 */
__kernel void broadcast_rows(
    __global float *seq, __global const float *rows,
    int seq_len, int offset, int count, int width)
{
    const int d = get_global_id(0);
    const int t = get_global_id(1);
    const int b = get_global_id(2);
    if (d >= width || t >= count) {
        return;
    }
    seq[(b * seq_len + offset + t) * width + d] = rows[t * width + d];
}

/*
 * key_bias: the additive attention bias per key, bias[b, t] = 0 for a valid key and MASK_BIAS for
 * a padded instruction token (token_mask == 0); every non-instruction token is always valid.
 * Global size: (seq_len, batch).
 */
__kernel void key_bias(
    __global const float *token_mask, __global float *bias,
    int seq_len, int text_offset, int max_tokens, float mask_bias)
{
    const int t = get_global_id(0);
    const int b = get_global_id(1);
    if (t >= seq_len) {
        return;
    }
    float value = 0.0f;
    if (t >= text_offset && t < text_offset + max_tokens) {
        value = (token_mask[b * max_tokens + t - text_offset] > 0.5f) ? 0.0f : mask_bias;
    }
    bias[b * seq_len + t] = value;
}

/*
 * layer_norm: out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta, per row
 * (biased variance, as torch.nn.LayerNorm). Rows are mapped with map_row so the final norm can
 * read only the action-query rows.
 *
 * Work-group layout: one work-group of WG work-items (a power of two) per row. Each work-item
 * sums a strided slice of the row, then a tree reduction in local memory gives the mean; a second
 * pass over the row (still in cache, D is at most a few thousand) gives the variance of the
 * centred values, which is more accurate in fp32 than E[x^2] - E[x]^2.
 * Global size: (WG, rows); local size: (WG, 1); `scratch` holds WG floats.
 */
__kernel void layer_norm(
    __global const float *x, int x_rows_per_group, int x_group_stride, int x_row_offset,
    __global float *out,
    __global const float *gamma, __global const float *beta,
    int width, float eps, __local float *scratch)
{
    const int r = get_group_id(1);
    const int lid = get_local_id(0);
    const int wg = get_local_size(0);
    __global const float *row = x + map_row(r, x_rows_per_group, x_group_stride, x_row_offset) * width;

    float partial = 0.0f;
    for (int d = lid; d < width; d += wg) {
        partial += row[d];
    }
    scratch[lid] = partial;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = wg / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            scratch[lid] += scratch[lid + stride];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float mean = scratch[0] / (float)width;
    barrier(CLK_LOCAL_MEM_FENCE);

    partial = 0.0f;
    for (int d = lid; d < width; d += wg) {
        const float centred = row[d] - mean;
        partial += centred * centred;
    }
    scratch[lid] = partial;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = wg / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            scratch[lid] += scratch[lid + stride];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv_std = rsqrt(scratch[0] / (float)width + eps);

    __global float *dst = out + r * width;
    for (int d = lid; d < width; d += wg) {
        dst[d] = (row[d] - mean) * inv_std * gamma[d] + beta[d];
    }
}

/*
 * attention: multi-head softmax attention with an additive key bias (key padding mask).
 *
 * qkv holds, per token row, [q (D) | k (D) | v (D)] as produced by the fused qkv linear layer;
 * head h uses columns h*Dh .. (h+1)*Dh - 1 of each part. For query token i of sample b, head h:
 *   s_j = (q_i . k_j) * scale + key_bias[b, j]
 *   out[b*T + i, h*Dh : (h+1)*Dh] = sum_j softmax(s)_j * v_j
 * (scale = 1/sqrt(Dh); the output layout is the heads concatenated, ready for the proj linear).
 *
 * Work-group layout: one work-group of WG work-items (a power of two) per (i, h, b). The query
 * vector is staged in local memory once; the T scores are computed in parallel (work-item l
 * takes keys l, l + WG, ...) into local memory; a max and then a sum reduction give a numerically
 * safe softmax (subtract the max before exp); finally the work-items split the Dh output columns
 * and each sums over all T keys. Local memory: T + WG + Dh floats (T is a few hundred at most).
 * Global size: (WG * T, heads, batch); local size: (WG, 1, 1).
 */
__kernel void attention(
    __global const float *qkv, __global const float *key_bias, __global float *out,
    int seq_len, int width, int head_dim, float scale,
    __local float *scores, __local float *reduce, __local float *query)
{
    const int i = get_group_id(0);
    const int h = get_group_id(1);
    const int b = get_group_id(2);
    const int lid = get_local_id(0);
    const int wg = get_local_size(0);
    const int qkv_width = 3 * width;
    __global const float *tokens = qkv + b * seq_len * qkv_width;
    __global const float *bias = key_bias + b * seq_len;

    for (int d = lid; d < head_dim; d += wg) {
        query[d] = tokens[i * qkv_width + h * head_dim + d];
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* scores and their running maximum */
    float local_max = -INFINITY;
    for (int j = lid; j < seq_len; j += wg) {
        __global const float *key = tokens + j * qkv_width + width + h * head_dim;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) {
            dot += query[d] * key[d];
        }
        const float s = dot * scale + bias[j];
        scores[j] = s;
        local_max = fmax(local_max, s);
    }
    reduce[lid] = local_max;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = wg / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            reduce[lid] = fmax(reduce[lid], reduce[lid + stride]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float row_max = reduce[0];
    barrier(CLK_LOCAL_MEM_FENCE);

    /* exponentials and their sum */
    float local_sum = 0.0f;
    for (int j = lid; j < seq_len; j += wg) {
        const float e = exp(scores[j] - row_max);
        scores[j] = e;
        local_sum += e;
    }
    reduce[lid] = local_sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = wg / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            reduce[lid] += reduce[lid + stride];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv_sum = 1.0f / reduce[0];

    /* weighted sum of values, one output column per work-item */
    for (int d = lid; d < head_dim; d += wg) {
        __global const float *value = tokens + 2 * width + h * head_dim + d;
        float acc = 0.0f;
        for (int j = 0; j < seq_len; ++j) {
            acc += scores[j] * value[j * qkv_width];
        }
        out[(b * seq_len + i) * width + h * head_dim + d] = acc * inv_sum;
    }
}

/*
 * attention_blocked: the same function as `attention`, QB queries per work-group.
 *
 * `attention` re-reads every key and value row once per query; at a few hundred tokens that is
 * the bulk of the device's memory traffic. Here one work-group takes QB consecutive queries of one
 * (sample, head), so each key and value row is read once per QB queries:
 *   1. the QB query vectors go to local memory (rows padded by one float so that work-items
 *      reading the same column of different queries hit different banks);
 *   2. scores[r][j] for all QB x T pairs: work-item l takes pairs l, l + ATT_WG, ... in key-major
 *      order, so the QB work-items sharing a key read the same row (one cache line, broadcast);
 *   3. softmax per query row: LANES = ATT_WG / QB work-items per row each reduce a strided part of
 *      the row (max, then sum of exp), and combine the LANES partial results through local memory;
 *   4. output: work-item l owns head columns d = l, l + ATT_WG, ... and keeps QB accumulators in
 *      registers, so each value element is read once per work-group (coalesced along d) and each
 *      probability is a local-memory broadcast.
 * Local memory: QB * (Dh + 1) + QB * T + 2 * QB * LANES + 2 * QB floats (about 26 KB for T = 335,
 * Dh = 64); the host falls back to `attention` on devices with less local memory.
 * Global size: (ATT_WG * ceil(T / QB), heads, batch); local size: (ATT_WG, 1, 1).
 */
#ifndef QB
#define QB 16
#endif
#ifndef ATT_WG
#define ATT_WG 64
#endif
#define LANES (ATT_WG / QB)

__kernel void attention_blocked(
    __global const float *qkv, __global const float *key_bias, __global float *out,
    int seq_len, int width, int head_dim, float scale,
    __local float *query, __local float *scores, __local float *partial, __local float *row_stats)
{
    const int q0 = get_group_id(0) * QB;
    const int h = get_group_id(1);
    const int b = get_group_id(2);
    const int lid = get_local_id(0);
    const int qkv_width = 3 * width;
    const int query_stride = head_dim + 1;
    __global const float *tokens = qkv + b * seq_len * qkv_width;
    __global const float *bias = key_bias + b * seq_len;

    /* 1. queries of this block (zeros past the end of the sequence; their output is not written) */
    for (int idx = lid; idx < QB * head_dim; idx += ATT_WG) {
        const int r = idx / head_dim;
        const int d = idx % head_dim;
        query[r * query_stride + d] = (q0 + r < seq_len) ? tokens[(q0 + r) * qkv_width + h * head_dim + d] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* 2. scores, key-major so that neighbouring work-items share a key row */
    for (int idx = lid; idx < QB * seq_len; idx += ATT_WG) {
        const int j = idx / QB;
        const int r = idx % QB;
        __global const float *key = tokens + j * qkv_width + width + h * head_dim;
        __local const float *q = query + r * query_stride;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) {
            dot += q[d] * key[d];
        }
        scores[r * seq_len + j] = dot * scale + bias[j];
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* 3. softmax: LANES work-items per row */
    const int row = lid / LANES;
    const int lane = lid % LANES;
    __local float *row_scores = scores + row * seq_len;
    float local_max = -INFINITY;
    for (int j = lane; j < seq_len; j += LANES) {
        local_max = fmax(local_max, row_scores[j]);
    }
    partial[row * LANES + lane] = local_max;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0) {
        float m = partial[row * LANES];
        for (int l = 1; l < LANES; ++l) {
            m = fmax(m, partial[row * LANES + l]);
        }
        row_stats[row] = m;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const float row_max = row_stats[row];
    float local_sum = 0.0f;
    for (int j = lane; j < seq_len; j += LANES) {
        const float e = exp(row_scores[j] - row_max);
        row_scores[j] = e;
        local_sum += e;
    }
    partial[QB * LANES + row * LANES + lane] = local_sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0) {
        float s = 0.0f;
        for (int l = 0; l < LANES; ++l) {
            s += partial[QB * LANES + row * LANES + l];
        }
        row_stats[QB + row] = 1.0f / s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* 4. probabilities x values, QB accumulators per head column */
    for (int d = lid; d < head_dim; d += ATT_WG) {
        float acc[QB];
        for (int r = 0; r < QB; ++r) {
            acc[r] = 0.0f;
        }
        __global const float *value = tokens + 2 * width + h * head_dim + d;
        for (int j = 0; j < seq_len; ++j) {
            const float v = value[j * qkv_width];
            for (int r = 0; r < QB; ++r) {
                acc[r] += scores[r * seq_len + j] * v;
            }
        }
        for (int r = 0; r < QB && q0 + r < seq_len; ++r) {
            out[(b * seq_len + q0 + r) * width + h * head_dim + d] = acc[r] * row_stats[QB + r];
        }
    }
}
