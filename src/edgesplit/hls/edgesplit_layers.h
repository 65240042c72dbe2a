// edgesplit's layer templates for Vitis HLS: the bundle engine that `edgesplit estimate` costs.
//
// Feature maps live in DRAM (one m_axi arena, CHW order, one fm_t per value: an integer with a
// per-tensor number of fraction bits fixed at compile time); weights and biases in two more arenas.
// Each layer loads tiles into banked on-chip buffers, computes with TM x TN (conv, linear) or
// TD x 9 (depth-wise) multipliers in a loop pipelined at II=1, and stores requantized results:
// the loop nest of Zhang et al. (FPGA'15), as docs/hardware-model.md costs it.
//
// Arithmetic is exactly quant.fixed.run_integer's: integer products summed in an accumulator wide
// enough never to overflow, the bias added at the accumulator's fraction bits, then a shift with
// round half up and saturation to the output format. EDGESPLIT_CSIM counts the iterations of every
// pipelined loop (cycles at II=1) per layer, for the cycle check against the model.
#ifndef EDGESPLIT_LAYERS_H
#define EDGESPLIT_LAYERS_H

#include <ap_int.h>
#include <stdint.h>

#ifdef EDGESPLIT_CSIM
extern long long edgesplit_cycles;  // iterations of the compute loops (pipelined, II=1) in the layer being run
extern long long edgesplit_invocations;  // times a compute loop nest was entered (one pipeline fill each)
extern long long edgesplit_loads;  // iterations of the tile-load loops (II=1), which do not overlap compute
extern long long edgesplit_dw_cycles, edgesplit_dw_invocations;  // a bundle's depth-wise part
#define ES_COUNT() (++edgesplit_cycles)
#define ES_INVOKE() (++edgesplit_invocations)
#define ES_LOAD() (++edgesplit_loads)
#define ES_DW_COUNT() (++edgesplit_dw_cycles)
#define ES_DW_INVOKE() (++edgesplit_dw_invocations)
#else
#define ES_COUNT()
#define ES_INVOKE()
#define ES_LOAD()
#define ES_DW_COUNT()
#define ES_DW_INVOKE()
#endif

namespace es {

// q with FRAC_IN fraction bits -> BITS-bit integer with FRAC_IN - SHIFT fraction bits:
// shift right with round half up (SHIFT > 0) or left (SHIFT < 0), then saturate.
template <int SHIFT, int BITS, typename T>
inline ap_int<BITS> requant(T q) {
    ap_int<72> v = q;
    if (SHIFT > 0) {
        v = (v + (ap_int<72>(1) << (SHIFT > 0 ? SHIFT - 1 : 0))) >> (SHIFT > 0 ? SHIFT : 0);
    } else if (SHIFT < 0) {
        v = v << (SHIFT < 0 ? -SHIFT : 0);
    }
    const ap_int<72> lo = -(ap_int<72>(1) << (BITS - 1));
    const ap_int<72> hi = (ap_int<72>(1) << (BITS - 1)) - 1;
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return ap_int<BITS>(v);
}

// floor(a / b) for b > 0 (C++ division truncates toward zero).
inline ap_int<72> floor_div(ap_int<72> a, ap_int<72> b) {
    ap_int<72> q = a / b;
    if ((a % b != 0) && (a < 0)) q -= 1;
    return q;
}

// Load an input tile: BANKS channels from c_first (those at or past c_end are zeros), rows of
// output tile r0.. and columns c0.. with their halo; zeros outside the map (the padding). One pixel
// of every bank per cycle.
template <typename fm_t, int BANKS, int IH, int IW, int HI, int WI, int K, int S, int PT, int PL>
void load_tile(fm_t ibuf[BANKS][IH][IW], const fm_t *in, int c_first, int c_end, int r0, int c0, int tr, int tc) {
    for (int i = 0; i < (tr - 1) * S + K; i++)
        for (int j = 0; j < (tc - 1) * S + K; j++) {
#pragma HLS PIPELINE II=1
            ES_LOAD();
            for (int b = 0; b < BANKS; b++) {
#pragma HLS UNROLL
                const int c = c_first + b, y = r0 * S + i - PT, x = c0 * S + j - PL;
                ibuf[b][i][j] = (c < c_end && y >= 0 && y < HI && x >= 0 && x < WI) ? in[(c * HI + y) * WI + x] : fm_t(0);
            }
        }
}

// Output stage of a conv tile: bias, requantize, ReLU, a POOL x POOL max-pool when POOL > 1, store.
template <typename fm_t, typename acc_t, int TM, int TR, int TC, int HO, int WO, int SHIFT, int FBITS, bool RELU, int POOL>
void store_tile(acc_t acc[TM][TR][TC], const ap_int<32> *bias, fm_t *out, int co_first, int co_end, int r0, int c0,
                int tr, int tc) {
    for (int m = 0; m < TM && co_first + m < co_end; m++) {
        const int co = co_first + m;
        for (int i = 0; i < tr; i += POOL)
            for (int j = 0; j < tc; j += POOL) {
#pragma HLS PIPELINE II=1
                fm_t best = 0;
                for (int pi = 0; pi < POOL; pi++)
                    for (int pj = 0; pj < POOL; pj++) {
                        fm_t v = requant<SHIFT, FBITS>(acc[m][i + pi][j + pj] + acc_t(bias[co]));
                        if (RELU && v < 0) v = 0;
                        if ((pi == 0 && pj == 0) || v > best) best = v;
                    }
                out[(co * (HO / POOL) + (r0 + i) / POOL) * (WO / POOL) + (c0 + j) / POOL] = best;
            }
    }
}

// Convolution (groups G; a depth-wise conv uses dwconv). Output pixels in TR x TC tiles; the tile
// loops stop at the map's edge. For each tile and output-channel block: the input-channel blocks'
// partial sums accumulate in acc; the last one adds the bias, requantizes, applies ReLU and, when
// POOL > 1, a POOL x POOL max-pool in the output stage (conv + max-pool fusion).
template <typename fm_t, typename wt_t, typename acc_t, int CI, int HI, int WI, int CO, int HO, int WO, int K, int S,
          int PT, int PL, int G, int TM, int TN, int TR, int TC, int SHIFT, int FBITS, bool RELU, int POOL>
void conv(const fm_t *in, const wt_t *w, const ap_int<32> *bias, fm_t *out) {
    const int CIG = CI / G, COG = CO / G;
    const int IH = (TR - 1) * S + K, IW = (TC - 1) * S + K;
    fm_t ibuf[TN][IH][IW];
    wt_t wbuf[TM][TN][K][K];
    acc_t acc[TM][TR][TC];
#pragma HLS ARRAY_PARTITION variable=ibuf dim=1 complete
#pragma HLS ARRAY_PARTITION variable=wbuf dim=1 complete
#pragma HLS ARRAY_PARTITION variable=wbuf dim=2 complete
#pragma HLS ARRAY_PARTITION variable=acc dim=1 complete
    for (int g = 0; g < G; g++) {
        for (int r0 = 0; r0 < HO; r0 += TR) {
            for (int c0 = 0; c0 < WO; c0 += TC) {
                const int tr = (HO - r0 < TR) ? HO - r0 : TR;
                const int tc = (WO - c0 < TC) ? WO - c0 : TC;
                for (int m0 = 0; m0 < COG; m0 += TM) {
                    for (int n0 = 0; n0 < CIG; n0 += TN) {
                        // the input tile, TN banks, and the weight tile, TM x TN per cycle
                        load_tile<fm_t, TN, IH, IW, HI, WI, K, S, PT, PL>(ibuf, in, g * CIG + n0, g * CIG + CIG, r0, c0, tr, tc);
                        for (int ki = 0; ki < K; ki++)
                            for (int kj = 0; kj < K; kj++) {
#pragma HLS PIPELINE II=1
                                ES_LOAD();
                                for (int m = 0; m < TM; m++)
                                    for (int n = 0; n < TN; n++) {
#pragma HLS UNROLL
                                        const int co = m0 + m, ci = n0 + n;
                                        wbuf[m][n][ki][kj] = (co < COG && ci < CIG)
                                            ? w[(((g * COG + co) * CIG + ci) * K + ki) * K + kj] : wt_t(0);
                                    }
                            }
                        // compute: TM x TN multiply-accumulates per cycle
                        ES_INVOKE();
                        for (int i = 0; i < tr; i++)
                            for (int j = 0; j < tc; j++)
                                for (int ki = 0; ki < K; ki++)
                                    for (int kj = 0; kj < K; kj++) {
#pragma HLS PIPELINE II=1
                                        ES_COUNT();
                                        for (int m = 0; m < TM; m++) {
#pragma HLS UNROLL
                                            acc_t sum = (n0 == 0 && ki == 0 && kj == 0) ? acc_t(0) : acc[m][i][j];
                                            for (int n = 0; n < TN; n++) {
#pragma HLS UNROLL
                                                sum += wbuf[m][n][ki][kj] * ibuf[n][i * S + ki][j * S + kj];
                                            }
                                            acc[m][i][j] = sum;
                                        }
                                    }
                    }
                    store_tile<fm_t, acc_t, TM, TR, TC, HO, WO, SHIFT, FBITS, RELU, POOL>(acc, bias, out, g * COG + m0,
                                                                                   g * COG + COG, r0, c0, tr, tc);
                }
            }
        }
    }
}

// One group of TD channels of a depth-wise K x K conv over one output tile, on the DW unit (TD x K*K
// multipliers): load the input tile and the weights, then one output pixel of every channel per
// cycle into dst, requantized (and ReLU). BUNDLE: counted as a bundle's DW part.
template <typename fm_t, typename wt_t, typename acc_t, int C, int HI, int WI, int K, int S, int PT, int PL, int TD,
          int TR, int TC, int SHIFT, int FBITS, bool RELU, bool BUNDLE>
void dw_tile(fm_t dst[TD][TR][TC], const fm_t *in, const wt_t *w, const ap_int<32> *bias, int d0, int r0, int c0,
             int tr, int tc) {
    const int IH = (TR - 1) * S + K, IW = (TC - 1) * S + K;
    fm_t ibuf[TD][IH][IW];
    wt_t wbuf[TD][K][K];
#pragma HLS ARRAY_PARTITION variable=ibuf dim=1 complete
#pragma HLS ARRAY_PARTITION variable=wbuf complete
    load_tile<fm_t, TD, IH, IW, HI, WI, K, S, PT, PL>(ibuf, in, d0, C, r0, c0, tr, tc);
    for (int ki = 0; ki < K; ki++)
        for (int kj = 0; kj < K; kj++) {
#pragma HLS PIPELINE II=1
            ES_LOAD();
            for (int d = 0; d < TD; d++) {
#pragma HLS UNROLL
                wbuf[d][ki][kj] = (d0 + d < C) ? w[((d0 + d) * K + ki) * K + kj] : wt_t(0);
            }
        }
    if (BUNDLE) ES_DW_INVOKE(); else ES_INVOKE();
    for (int i = 0; i < tr; i++)
        for (int j = 0; j < tc; j++) {
#pragma HLS PIPELINE II=1
            if (BUNDLE) ES_DW_COUNT(); else ES_COUNT();
            for (int d = 0; d < TD; d++) {
#pragma HLS UNROLL
                acc_t sum = (d0 + d < C) ? acc_t(bias[d0 + d]) : acc_t(0);
                for (int ki = 0; ki < K; ki++)
                    for (int kj = 0; kj < K; kj++) {
#pragma HLS UNROLL
                        sum += wbuf[d][ki][kj] * ibuf[d][i * S + ki][j * S + kj];
                    }
                fm_t v = requant<SHIFT, FBITS>(sum);
                if (RELU && v < 0) v = 0;
                dst[d][i][j] = (d0 + d < C) ? v : fm_t(0);
            }
        }
}

// Depth-wise K x K convolution on its own (not followed by a point-wise conv): tile by tile,
// group by group through dw_tile, stored to DRAM.
template <typename fm_t, typename wt_t, typename acc_t, int C, int HI, int WI, int HO, int WO, int K, int S, int PT,
          int PL, int TD, int TR, int TC, int SHIFT, int FBITS, bool RELU>
void dwconv(const fm_t *in, const wt_t *w, const ap_int<32> *bias, fm_t *out) {
    fm_t obuf[TD][TR][TC];
#pragma HLS ARRAY_PARTITION variable=obuf dim=1 complete
    for (int r0 = 0; r0 < HO; r0 += TR)
        for (int c0 = 0; c0 < WO; c0 += TC) {
            const int tr = (HO - r0 < TR) ? HO - r0 : TR;
            const int tc = (WO - c0 < TC) ? WO - c0 : TC;
            for (int d0 = 0; d0 < C; d0 += TD) {
                dw_tile<fm_t, wt_t, acc_t, C, HI, WI, K, S, PT, PL, TD, TR, TC, SHIFT, FBITS, RELU, false>(
                    obuf, in, w, bias, d0, r0, c0, tr, tc);
                for (int d = 0; d < TD && d0 + d < C; d++)
                    for (int i = 0; i < tr; i++)
                        for (int j = 0; j < tc; j++) {
#pragma HLS PIPELINE II=1
                            out[((d0 + d) * HO + r0 + i) * WO + c0 + j] = obuf[d][i][j];
                        }
            }
        }
}

// The co-design seed's bundle: depth-wise K x K conv (+ReLU) -> point-wise conv (+ReLU, + max-pool),
// the DW output kept on chip one channel group at a time (TD channels, the fusion buffer). For each
// tile and block of TM PW outputs, each group of TD channels is computed on the DW unit (TD x K*K
// multipliers) and consumed by the PW unit (TM x TN) before the next: the DW work is repeated for
// every PW output block, and the two run one after the other.
template <typename fm_t, typename wt_t, typename acc_t, typename dacc_t, int C, int HI, int WI, int H, int W, int K, int S,
          int PT, int PL, int CO, int TD, int TM, int TN, int TR, int TC, int DSHIFT, bool DRELU, int SHIFT, int FBITS,
          bool RELU, int POOL>
void bundle(const fm_t *in, const wt_t *dw, const ap_int<32> *dbias, const wt_t *pw, const ap_int<32> *bias, fm_t *out) {
    fm_t fbuf[TD][TR][TC];  // the fusion buffer: one channel group's DW output tile
    wt_t wbuf[TM][TN];
    acc_t acc[TM][TR][TC];
#pragma HLS ARRAY_PARTITION variable=fbuf dim=1 complete
#pragma HLS ARRAY_PARTITION variable=wbuf complete
#pragma HLS ARRAY_PARTITION variable=acc dim=1 complete
    for (int r0 = 0; r0 < H; r0 += TR) {
        for (int c0 = 0; c0 < W; c0 += TC) {
            const int tr = (H - r0 < TR) ? H - r0 : TR;
            const int tc = (W - c0 < TC) ? W - c0 : TC;
            for (int m0 = 0; m0 < CO; m0 += TM) {
                for (int d0 = 0; d0 < C; d0 += TD) {
                    dw_tile<fm_t, wt_t, dacc_t, C, HI, WI, K, S, PT, PL, TD, TR, TC, DSHIFT, FBITS, DRELU, true>(
                        fbuf, in, dw, dbias, d0, r0, c0, tr, tc);
                    for (int n0 = 0; n0 < TD; n0 += TN) {
                        for (int m = 0; m < TM; m++) {
#pragma HLS PIPELINE II=1
                            ES_LOAD();
                            for (int n = 0; n < TN; n++) {
#pragma HLS UNROLL
                                const int co = m0 + m, ci = d0 + n0 + n;
                                wbuf[m][n] = (co < CO && ci < C && n0 + n < TD) ? pw[co * C + ci] : wt_t(0);
                            }
                        }
                        ES_INVOKE();
                        for (int i = 0; i < tr; i++)
                            for (int j = 0; j < tc; j++) {
#pragma HLS PIPELINE II=1
                                ES_COUNT();
                                for (int m = 0; m < TM; m++) {
#pragma HLS UNROLL
                                    acc_t sum = (d0 == 0 && n0 == 0) ? acc_t(0) : acc[m][i][j];
                                    for (int n = 0; n < TN; n++) {
#pragma HLS UNROLL
                                        if (n0 + n < TD) sum += wbuf[m][n] * fbuf[n0 + n][i][j];
                                    }
                                    acc[m][i][j] = sum;
                                }
                            }
                    }
                }
                store_tile<fm_t, acc_t, TM, TR, TC, H, W, SHIFT, FBITS, RELU, POOL>(acc, bias, out, m0, CO, r0, c0, tr, tc);
            }
        }
    }
}

// Fully connected: TM outputs x TN inputs per cycle.
template <typename fm_t, typename wt_t, typename acc_t, int N, int M, int TM, int TN, int SHIFT, int FBITS, bool RELU>
void linear(const fm_t *in, const wt_t *w, const ap_int<32> *bias, fm_t *out) {
    for (int m0 = 0; m0 < M; m0 += TM) {
        acc_t acc[TM];
#pragma HLS ARRAY_PARTITION variable=acc complete
        for (int m = 0; m < TM; m++) acc[m] = (m0 + m < M) ? acc_t(bias[m0 + m]) : acc_t(0);
        ES_INVOKE();
        for (int n0 = 0; n0 < N; n0 += TN) {
#pragma HLS PIPELINE II=1
            ES_COUNT();
            for (int m = 0; m < TM; m++) {
#pragma HLS UNROLL
                for (int n = 0; n < TN; n++) {
#pragma HLS UNROLL
                    if (m0 + m < M && n0 + n < N) acc[m] += w[(m0 + m) * N + n0 + n] * in[n0 + n];
                }
            }
        }
        for (int m = 0; m < TM && m0 + m < M; m++) {
            fm_t v = requant<SHIFT, FBITS>(acc[m]);
            if (RELU && v < 0) v = 0;
            out[m0 + m] = v;
        }
    }
}

// K x K max-pool (stride S, padding never wins) on the TM-wide vector unit; SHIFT requantizes
// (0 when the format is kept, as for every max-pool of the quantizer).
template <typename fm_t, int C, int HI, int WI, int HO, int WO, int K, int S, int PT, int PL, int TM, int SHIFT, int FBITS>
void maxpool(const fm_t *in, fm_t *out) {
    fm_t best[TM];
    bool seen[TM];
#pragma HLS ARRAY_PARTITION variable=best complete
#pragma HLS ARRAY_PARTITION variable=seen complete
    ES_INVOKE();
    for (int c0 = 0; c0 < C; c0 += TM)
        for (int i = 0; i < HO; i++)
            for (int j = 0; j < WO; j++)
                for (int ki = 0; ki < K; ki++)
                    for (int kj = 0; kj < K; kj++) {
#pragma HLS PIPELINE II=1
                        ES_COUNT();
                        for (int m = 0; m < TM; m++) {
#pragma HLS UNROLL
                            const int c = c0 + m, y = i * S + ki - PT, x = j * S + kj - PL;
                            if (ki == 0 && kj == 0) seen[m] = false;
                            if (c < C && y >= 0 && y < HI && x >= 0 && x < WI) {
                                const fm_t v = requant<SHIFT, FBITS>(in[(c * HI + y) * WI + x]);
                                if (!seen[m] || v > best[m]) best[m] = v;
                                seen[m] = true;
                            }
                            if (ki == K - 1 && kj == K - 1 && c < C) out[(c * HO + i) * WO + j] = best[m];
                        }
                    }
}

// Global average pool: the sum of each channel, divided with round half up to the output format.
template <typename fm_t, int C, int H, int W, int D /* out frac - in frac */, int FBITS>
void gap(const fm_t *in, fm_t *out) {
    for (int c = 0; c < C; c++) {
        ap_int<72> s = 0;
        for (int p = 0; p < H * W; p++) {
#pragma HLS PIPELINE II=1
            ES_COUNT();
            s += in[c * H * W + p];
        }
        const ap_int<72> num = D >= 0 ? ap_int<72>(s << (D >= 0 ? D : 0)) : s;
        const ap_int<72> den = D >= 0 ? ap_int<72>(H * W) : ap_int<72>(ap_int<72>(H * W) << (D < 0 ? -D : 0));
        out[c] = requant<0, FBITS>(floor_div(2 * num + den, 2 * den));
    }
}

// Element-wise: a (+ b), each aligned to the finer of the two formats, requantized; optional ReLU.
template <typename fm_t, int N, int LA, int LB, int SHIFT, int FBITS, bool RELU>
void add(const fm_t *a, const fm_t *b, fm_t *out) {
    for (int p = 0; p < N; p++) {
#pragma HLS PIPELINE II=1
        ES_COUNT();
        ap_int<72> s = (ap_int<72>(a[p]) << LA) + (ap_int<72>(b[p]) << LB);
        fm_t v = requant<SHIFT, FBITS>(s);
        if (RELU && v < 0) v = 0;
        out[p] = v;
    }
}

// One operand of a channel concat (or a standalone ReLU / requantization): copy with requantize.
template <typename fm_t, int N, int SHIFT, int FBITS, bool RELU>
void copy(const fm_t *in, fm_t *out) {
    for (int p = 0; p < N; p++) {
#pragma HLS PIPELINE II=1
        ES_COUNT();
        fm_t v = in[p];
        if (RELU && v < 0) v = 0;
        out[p] = requant<SHIFT, FBITS>(v);
    }
}

}  // namespace es
#endif
