// jaxcnn's direct convolutions for a CPU, as XLA FFI handlers (jaxcnn/kernels/direct.py).
//
// Stride 1, zero padding, NHWC input, HWIO kernel, float32. A block of output pixels of one
// row times a block of output channels is held in vector registers while the kernel's taps
// and input channels stream past: no patch matrix is written. The weight gradient keeps a
// block of input channels times output channels of one tap in registers and streams the
// pixels. Images are shared out over XLA's intra-op threads.
// Built by direct.py with -march=native; the vector width follows the instruction set.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
constexpr int VL = 16, MAXACC = 24;
#elif defined(__AVX__)
constexpr int VL = 8, MAXACC = 12;
#else
constexpr int VL = 4, MAXACC = 12;
#endif
// Unaligned, and allowed to alias the floats it is loaded from.
typedef float vec __attribute__((vector_size(VL * 4), aligned(4), may_alias));
static inline vec load(const float* p) { return *reinterpret_cast<const vec*>(p); }
static inline void store(float* p, vec v) { *reinterpret_cast<vec*>(p) = v; }
static inline vec bcast(float x) { return vec{} + x; }

struct Shape { int N, H, W, Ci, KH, KW, Co, pad, Ho, Wo, Hp, Wp; };

static Shape make_shape(ffi::Span<const int64_t> xd, int kh, int kw, int co, int64_t pad) {
  Shape s{(int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], kh, kw, co, (int)pad, 0, 0, 0, 0};
  s.Hp = s.H + 2 * s.pad; s.Wp = s.W + 2 * s.pad; s.Ho = s.Hp - s.KH + 1; s.Wo = s.Wp - s.KW + 1;
  return s;
}

// What the kernels assume (direct.py's applies() keeps to it): a whole vector of outputs,
// zero padding of at most the kernel's size less one, an output at least one pixel wide.
static bool valid(const Shape& s) {
  return s.Co % VL == 0 && s.pad >= 0 && s.pad < s.KH && s.pad < s.KW && s.Ho > 0 && s.Wo > 0;
}

// Output pixels ow0 .. ow0 + P - 1 of row oh, all output channels, CB vectors at a time.
template <int CB, int P>
static void fwd_block(const float* xp, const Shape& s, const float* w, float* y, int oh, int ow0) {
  // A kernel row's taps times input channels lie contiguous in the padded image (from
  // pixel p's first tap on) and in the kernel: one loop of KW * Ci, not two.
  const int row = s.KW * s.Ci;
  for (int co0 = 0; co0 < s.Co; co0 += VL * CB) {
    vec acc[CB][P];
    for (int c = 0; c < CB; ++c) for (int p = 0; p < P; ++p) acc[c][p] = vec{};
    for (int kh = 0; kh < s.KH; ++kh) {
      const float* xr = xp + ((size_t)(oh + kh) * s.Wp + ow0) * s.Ci;
      const float* wt = w + (size_t)kh * row * s.Co + co0;
      for (int j = 0; j < row; ++j) {
        vec wv[CB];
        for (int c = 0; c < CB; ++c) wv[c] = load(wt + (size_t)j * s.Co + VL * c);
        for (int p = 0; p < P; ++p) {
          vec b = bcast(xr[(size_t)p * s.Ci + j]);
          for (int c = 0; c < CB; ++c) acc[c][p] += b * wv[c];
        }
      }
    }
    float* yo = y + ((size_t)oh * s.Wo + ow0) * s.Co + co0;
    for (int p = 0; p < P; ++p) for (int c = 0; c < CB; ++c) store(yo + (size_t)p * s.Co + VL * c, acc[c][p]);
  }
}

// The last t < T pixels of a row: a block of exactly t.
template <int CB, int T>
static void fwd_tail(int t, const float* xp, const Shape& s, const float* w, float* y, int oh, int ow0) {
  if constexpr (T > 0) {
    if (t == T) return fwd_block<CB, T>(xp, s, w, y, oh, ow0);
    fwd_tail<CB, T - 1>(t, xp, s, w, y, oh, ow0);
  }
}

// Rows in blocks of P pixels (P * CB sums in registers), then the row's rest in one block.
template <int CB, int P>
static void fwd_image(const float* xp, const Shape& s, const float* w, float* y) {
  const int whole = s.Wo / P * P;
  for (int oh = 0; oh < s.Ho; ++oh) {
    for (int ow0 = 0; ow0 < whole; ow0 += P) fwd_block<CB, P>(xp, s, w, y, oh, ow0);
    if (whole < s.Wo) fwd_tail<CB, P - 1>(s.Wo - whole, xp, s, w, y, oh, whole);
  }
}

// TB taps at once where there are few input channels: enough independent sums to hide the
// latency of each multiply-add.
template <int CB, int CIB, int TB>
static void dw_image(const float* xp, const float* dy, const Shape& s, float* dw) {
  for (int t0 = 0; t0 < s.KH * s.KW; t0 += TB) {
    size_t off[TB];
    for (int t = 0; t < TB; ++t) off[t] = ((size_t)((t0 + t) / s.KW) * s.Wp + (t0 + t) % s.KW) * s.Ci;
    for (int ci0 = 0; ci0 < s.Ci; ci0 += CIB)
      for (int co0 = 0; co0 < s.Co; co0 += VL * CB) {
        float* d = dw + ((size_t)t0 * s.Ci + ci0) * s.Co + co0;
        const size_t tap_stride = (size_t)s.Ci * s.Co;
        vec acc[TB][CIB][CB];
        for (int t = 0; t < TB; ++t)
          for (int i = 0; i < CIB; ++i)
            for (int c = 0; c < CB; ++c) acc[t][i][c] = load(d + t * tap_stride + (size_t)i * s.Co + VL * c);
        for (int oh = 0; oh < s.Ho; ++oh) {
          const float* g = dy + (size_t)oh * s.Wo * s.Co + co0;
          for (int ow = 0; ow < s.Wo; ++ow) {
            const float* xr = xp + ((size_t)oh * s.Wp + ow) * s.Ci + ci0;
            vec gv[CB];
            for (int c = 0; c < CB; ++c) gv[c] = load(g + (size_t)ow * s.Co + VL * c);
            for (int t = 0; t < TB; ++t)
              for (int i = 0; i < CIB; ++i) {
                vec b = bcast(xr[off[t] + i]);
                for (int c = 0; c < CB; ++c) acc[t][i][c] += b * gv[c];
              }
          }
        }
        for (int t = 0; t < TB; ++t)
          for (int i = 0; i < CIB; ++i)
            for (int c = 0; c < CB; ++c) store(d + t * tap_stride + (size_t)i * s.Co + VL * c, acc[t][i][c]);
      }
  }
}

using FwdFn = void (*)(const float*, const Shape&, const float*, float*);
using DwFn = void (*)(const float*, const float*, const Shape&, float*);

static int co_blocks(int co) {
  int b = co / VL;
  return b % 4 == 0 ? 4 : b % 2 == 0 ? 2 : 1;
}

// A row of exactly wo <= P pixels in one block.
template <int CB, int P>
static FwdFn whole_row(int wo) {
  if constexpr (P < 1) return nullptr;
  else return wo == P ? fwd_image<CB, P> : whole_row<CB, P - 1>(wo);
}

// The widest block from P down to Lo pixels that divides the row, or nullptr.
template <int CB, int P, int Lo>
static FwdFn dividing(int wo) {
  if constexpr (P < Lo) return nullptr;
  else return wo % P == 0 ? fwd_image<CB, P> : dividing<CB, P - 1, Lo>(wo);
}

// The widest block (at most 16 pixels, CB * P sums in the registers) that divides the row,
// among those at least half as wide; else the widest, and a narrower last block.
template <int CB>
static FwdFn pick_fwd_cb(int wo) {
  constexpr int widest = std::min(16, MAXACC / CB);
  if (wo <= widest) return whole_row<CB, widest>(wo);
  FwdFn fn = dividing<CB, widest, (widest + 1) / 2>(wo);
  return fn ? fn : fwd_image<CB, widest>;
}

static FwdFn pick_fwd(const Shape& s) {
  int cb = co_blocks(s.Co);
  return cb == 4 ? pick_fwd_cb<4>(s.Wo) : cb == 2 ? pick_fwd_cb<2>(s.Wo) : pick_fwd_cb<1>(s.Wo);
}

template <int CB, int CIB>
static DwFn pick_taps(int taps) {
  if constexpr (CB * CIB * 9 <= MAXACC) if (taps % 9 == 0) return dw_image<CB, CIB, 9>;
  if constexpr (CB * CIB * 5 <= MAXACC) if (taps % 5 == 0) return dw_image<CB, CIB, 5>;
  if constexpr (CB * CIB * 3 <= MAXACC) if (taps % 3 == 0) return dw_image<CB, CIB, 3>;
  if constexpr (CB * CIB * 2 <= MAXACC) if (taps % 2 == 0) return dw_image<CB, CIB, 2>;
  return dw_image<CB, CIB, 1>;
}

template <int CB>
static DwFn pick_dw_cb(int ci, int taps) {
  if constexpr (CB * 16 <= MAXACC) if (ci % 16 == 0) return dw_image<CB, 16, 1>;
  if constexpr (CB * 12 <= MAXACC) if (ci % 12 == 0) return dw_image<CB, 12, 1>;
  if constexpr (CB * 8 <= MAXACC) if (ci % 8 == 0) return dw_image<CB, 8, 1>;
  if constexpr (CB * 6 <= MAXACC) if (ci % 6 == 0) return dw_image<CB, 6, 1>;
  if (ci % 4 == 0) return dw_image<CB, 4, 1>;
  if (ci % 3 == 0) return pick_taps<CB, 3>(taps);
  if (ci % 2 == 0) return pick_taps<CB, 2>(taps);
  return pick_taps<CB, 1>(taps);
}

static DwFn pick_dw(const Shape& s) {
  int cb = co_blocks(s.Co);
  const int taps = s.KH * s.KW;
  return cb == 4 ? pick_dw_cb<4>(s.Ci, taps) : cb == 2 ? pick_dw_cb<2>(s.Ci, taps) : pick_dw_cb<1>(s.Ci, taps);
}

// The image padded into a per-thread buffer (or the image itself when there is no padding).
static const float* padded(const float* x, const Shape& s) {
  if (!s.pad) return x;
  thread_local std::vector<float> buf;
  buf.assign((size_t)s.Hp * s.Wp * s.Ci, 0.0f);
  for (int h = 0; h < s.H; ++h)
    std::memcpy(buf.data() + ((size_t)(h + s.pad) * s.Wp + s.pad) * s.Ci, x + (size_t)h * s.W * s.Ci,
                sizeof(float) * s.W * s.Ci);
  return buf.data();
}

struct Job { std::atomic<int> next{0}, done{0}; };

// body(i) for i < total on the calling thread and on XLA's intra-op pool: the caller takes
// whatever no pool thread has started, so it never waits for a busy pool to get to it.
template <typename F>
static void parallel_for(ffi::ThreadPool& pool, int total, F body) {
  auto job = std::make_shared<Job>();
  auto work = [job, body, total]() {
    for (int i; (i = job->next.fetch_add(1)) < total;) { body(i); job->done.fetch_add(1); }
  };
  int helpers = std::min<int>(pool.num_threads(), total) - 1;
  for (int t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (job->done.load() < total) std::this_thread::yield();
}

static ffi::Error ConvFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::ResultBuffer<ffi::F32> y, int64_t pad) {
  auto wd = w.dimensions();
  Shape s = make_shape(x.dimensions(), wd[0], wd[1], wd[3], pad);
  if (!valid(s)) return ffi::Error::InvalidArgument("jaxcnn direct convolution: unsupported shape");
  FwdFn fn = pick_fwd(s);
  const float* xs = x.typed_data(); const float* ws = w.typed_data(); float* ys = y->typed_data();
  parallel_for(pool, s.N, [=](int n) {
    fn(padded(xs + (size_t)n * s.H * s.W * s.Ci, s), s, ws, ys + (size_t)n * s.Ho * s.Wo * s.Co);
  });
  return ffi::Error::Success();
}

static ffi::Error ConvDw(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                         ffi::ResultBuffer<ffi::F32> dw, int64_t pad) {
  auto dwd = dw->dimensions();
  Shape s = make_shape(x.dimensions(), dwd[0], dwd[1], dwd[3], pad);
  if (!valid(s)) return ffi::Error::InvalidArgument("jaxcnn direct convolution: unsupported shape");
  DwFn fn = pick_dw(s);
  const size_t size = (size_t)s.KH * s.KW * s.Ci * s.Co;
  int parts = std::max<int>(1, std::min<int>(pool.num_threads(), s.N));
  std::vector<std::vector<float>> partial(parts, std::vector<float>(size, 0.0f));
  const float* xs = x.typed_data(); const float* gs = dy.typed_data();
  parallel_for(pool, parts, [&, s](int part) {
    for (int n = part * s.N / parts; n < (part + 1) * s.N / parts; ++n)
      fn(padded(xs + (size_t)n * s.H * s.W * s.Ci, s), gs + (size_t)n * s.Ho * s.Wo * s.Co, s,
         partial[part].data());
  });
  float* out = dw->typed_data();
  std::memcpy(out, partial[0].data(), size * sizeof(float));
  for (int p = 1; p < parts; ++p) for (size_t i = 0; i < size; ++i) out[i] += partial[p][i];
  return ffi::Error::Success();
}

// ---- Winograd's F(m x m, r x r), forward (winograd.py has the algebra) ----
// Per image, tiles in chunks: V = B^T d B for each tile and vector of input channels into
// V[xi][tile][ci], then for each of the a * a positions xi a GEMM M[xi] = V[xi] U[xi] with a
// block of tiles times output channels in registers, then Y = A^T M A into the output.
// Nothing but the output leaves the caches; the transforms skip the matrices' zeros.

// B^T and A^T of F(4x4, 3x3) and F(4x4, 5x5): winograd.transforms(4, r) for its POINTS, in
// float32 (U = G g G^T comes from there; tests/test_direct.py holds the two to XLA's
// convolution). Constants, so that the unrolled transforms skip the zeros and ones.
constexpr float BT6[6][6] = {{1.0f, -1.5f, -2.0f, 1.5f, 1.0f, 0.0f}, {0.0f, -1.0f, 0.5f, 2.5f, 1.0f, 0.0f}, {0.0f, 1.0f, -2.5f, 0.5f, 1.0f, 0.0f}, {0.0f, -2.0f, -1.0f, 2.0f, 1.0f, 0.0f}, {0.0f, 0.5f, -1.0f, -0.5f, 1.0f, 0.0f}, {0.0f, 1.0f, -1.5f, -2.0f, 1.5f, 1.0f}};
constexpr float AT6[4][6] = {{1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 0.0f}, {0.0f, 1.0f, -1.0f, 0.5f, -2.0f, 0.0f}, {0.0f, 1.0f, 1.0f, 0.25f, 4.0f, 0.0f}, {0.0f, 1.0f, -1.0f, 0.125f, -8.0f, 1.0f}};
constexpr float BT8[8][8] = {{-1.0f, 0.0f, 5.25f, 0.0f, -5.25f, 0.0f, 1.0f, 0.0f}, {0.0f, 1.0f, 1.0f, -4.25f, -4.25f, 1.0f, 1.0f, 0.0f}, {0.0f, -1.0f, 1.0f, 4.25f, -4.25f, -1.0f, 1.0f, 0.0f}, {0.0f, 2.0f, 4.0f, -2.5f, -5.0f, 0.5f, 1.0f, 0.0f}, {0.0f, -0.5f, 0.25f, 2.5f, -1.25f, -2.0f, 1.0f, 0.0f}, {0.0f, 0.5f, 0.25f, -2.5f, -1.25f, 2.0f, 1.0f, 0.0f}, {0.0f, -2.0f, 4.0f, 2.5f, -5.0f, -0.5f, 1.0f, 0.0f}, {0.0f, -1.0f, 0.0f, 5.25f, 0.0f, -5.25f, 0.0f, 1.0f}};
constexpr float AT8[4][8] = {{1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 0.0f}, {0.0f, 1.0f, -1.0f, 0.5f, -2.0f, 2.0f, -0.5f, 0.0f}, {0.0f, 1.0f, 1.0f, 0.25f, 4.0f, 4.0f, 0.25f, 0.0f}, {0.0f, 1.0f, -1.0f, 0.125f, -8.0f, 8.0f, -0.125f, 1.0f}};
constexpr int WM = 4;  // output tile

// sum += c * v for a constant c of an unrolled transform: no multiply for 1 and -1, no
// term for 0.
static inline void mac(vec& sum, float c, vec v) {
  if (c == 1.0f) sum += v;
  else if (c == -1.0f) sum -= v;
  else if (c != 0.0f) sum += c * v;
}

template <int A> struct Mats;
template <> struct Mats<6> { static constexpr const float (&bt)[6][6] = BT6; static constexpr const float (&at)[4][6] = AT6; };
template <> struct Mats<8> { static constexpr const float (&bt)[8][8] = BT8; static constexpr const float (&at)[4][8] = AT8; };

struct WShape { int N, H, W, Ci, Co, r, m, a, pad, Ho, Wo, th, tw, Hb, Wb; };  // m: WM

// C[t][n] = sum_k A[t][k] B[k][n] for P rows from t0: CB vectors of n at a time.
template <int CB, int P>
static void gemm_block(const float* A, const float* B, float* C, int K, int N, int t0) {
  for (int n0 = 0; n0 < N; n0 += VL * CB) {
    vec acc[CB][P];
    for (int c = 0; c < CB; ++c) for (int p = 0; p < P; ++p) acc[c][p] = vec{};
    for (int k = 0; k < K; ++k) {
      vec bv[CB];
      for (int c = 0; c < CB; ++c) bv[c] = load(B + (size_t)k * N + n0 + VL * c);
      for (int p = 0; p < P; ++p) {
        vec x = bcast(A[(size_t)(t0 + p) * K + k]);
        for (int c = 0; c < CB; ++c) acc[c][p] += x * bv[c];
      }
    }
    for (int p = 0; p < P; ++p) for (int c = 0; c < CB; ++c) store(C + (size_t)(t0 + p) * N + n0 + VL * c, acc[c][p]);
  }
}

template <int CB, int T>
static void gemm_tail(int t, const float* A, const float* B, float* C, int K, int N, int t0) {
  if constexpr (T > 0) {
    if (t == T) return gemm_block<CB, T>(A, B, C, K, N, t0);
    gemm_tail<CB, T - 1>(t, A, B, C, K, N, t0);
  }
}

template <int CB>
static void gemm_cb(const float* A, const float* B, float* C, int rows, int K, int N) {
  constexpr int P = std::min(16, MAXACC / CB);
  const int whole = rows / P * P;
  for (int t0 = 0; t0 < whole; t0 += P) gemm_block<CB, P>(A, B, C, K, N, t0);
  if (whole < rows) gemm_tail<CB, P - 1>(rows - whole, A, B, C, K, N, whole);
}

// C [rows, N] = A [rows, K] B [K, N], N a multiple of VL.
static void gemm(const float* A, const float* B, float* C, int rows, int K, int N) {
  int cb = co_blocks(N);
  if (cb == 4) gemm_cb<4>(A, B, C, rows, K, N);
  else if (cb == 2) gemm_cb<2>(A, B, C, rows, K, N);
  else gemm_cb<1>(A, B, C, rows, K, N);
}

// V[xi][t][ci..] = (B^T d B)[xi] for the tile whose corner is at d (rows of stride row).
template <int A>
static inline void input_transform(const float* d, size_t row, int Ci, float* V, size_t xi_stride) {
  constexpr auto& bt = Mats<A>::bt;
  vec tmp[A][A];
#pragma GCC unroll 8
  for (int j = 0; j < A; ++j) {
    vec col[A];
#pragma GCC unroll 8
    for (int k = 0; k < A; ++k) col[k] = load(d + k * row + (size_t)j * Ci);
#pragma GCC unroll 8
    for (int i = 0; i < A; ++i) {
      vec sum{};
#pragma GCC unroll 8
      for (int k = 0; k < A; ++k) {
        mac(sum, bt[i][k], col[k]);
      }
      tmp[i][j] = sum;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < A; ++i)
#pragma GCC unroll 8
    for (int l = 0; l < A; ++l) {
      vec sum{};
#pragma GCC unroll 8
      for (int j = 0; j < A; ++j) {
        mac(sum, bt[l][j], tmp[i][j]);
      }
      store(V + (size_t)(i * A + l) * xi_stride, sum);
    }
}

// y's m x m block at (oy, ox), cut at Ho x Wo, = (A^T M A) for one tile and vector of outputs.
template <int A>
static inline void output_transform(const float* M, size_t xi_stride, float* y, const WShape& s, int oy,
                                    int ox) {
  constexpr auto& at = Mats<A>::at;
  vec tmp[WM][A];
#pragma GCC unroll 8
  for (int l = 0; l < A; ++l) {
    vec col[A];
#pragma GCC unroll 8
    for (int k = 0; k < A; ++k) col[k] = load(M + (size_t)(k * A + l) * xi_stride);
#pragma GCC unroll 4
    for (int i = 0; i < WM; ++i) {
      vec sum{};
#pragma GCC unroll 8
      for (int k = 0; k < A; ++k) {
        mac(sum, at[i][k], col[k]);
      }
      tmp[i][l] = sum;
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < WM; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < WM; ++j) {
      vec sum{};
#pragma GCC unroll 8
      for (int l = 0; l < A; ++l) {
        mac(sum, at[j][l], tmp[i][l]);
      }
      if (oy + i < s.Ho && ox + j < s.Wo) store(y + ((size_t)(oy + i) * s.Wo + ox + j) * s.Co, sum);
    }
}

constexpr int WCHUNK = 24;  // tiles a GEMM takes at once: V and M stay in the L2 cache

// The image zero-padded to whole tiles, in a per-thread buffer.
static const float* tiled(const float* x, const WShape& s) {
  thread_local std::vector<float> buf;
  buf.assign((size_t)s.Hb * s.Wb * s.Ci, 0.0f);
  for (int h = 0; h < s.H; ++h)
    std::memcpy(buf.data() + ((size_t)(h + s.pad) * s.Wb + s.pad) * s.Ci, x + (size_t)h * s.W * s.Ci,
                sizeof(float) * s.W * s.Ci);
  return buf.data();
}

// V[xi][t][ci] for tiles t0 .. t0 + T - 1 of the tiled image.
template <int A>
static void input_transforms(const float* buf, const WShape& s, int t0, int T, float* V) {
  const size_t row = (size_t)s.Wb * s.Ci;
  for (int t = 0; t < T; ++t) {
    const int ty = (t0 + t) / s.tw, tx = (t0 + t) % s.tw;
    const float* d = buf + (size_t)ty * WM * row + (size_t)tx * WM * s.Ci;
    for (int c = 0; c < s.Ci; c += VL) input_transform<A>(d + c, row, s.Ci, V + (size_t)t * s.Ci + c, (size_t)T * s.Ci);
  }
}

template <int A>
static void winograd_image(const float* x, const WShape& s, const float* U, float* y) {
  thread_local std::vector<float> V, M;
  const float* buf = tiled(x, s);
  V.resize((size_t)A * A * WCHUNK * s.Ci);
  M.resize((size_t)A * A * WCHUNK * s.Co);
  const int tiles = s.th * s.tw;
  for (int t0 = 0; t0 < tiles; t0 += WCHUNK) {
    const int T = std::min(WCHUNK, tiles - t0);
    input_transforms<A>(buf, s, t0, T, V.data());
    for (int xi = 0; xi < A * A; ++xi)
      gemm(V.data() + (size_t)xi * T * s.Ci, U + (size_t)xi * s.Ci * s.Co, M.data() + (size_t)xi * T * s.Co,
           T, s.Ci, s.Co);
    for (int t = 0; t < T; ++t) {
      const int ty = (t0 + t) / s.tw, tx = (t0 + t) % s.tw;
      for (int c = 0; c < s.Co; c += VL)
        output_transform<A>(M.data() + (size_t)t * s.Co + c, (size_t)T * s.Co, y + c, s, ty * WM, tx * WM);
    }
  }
}

// dM = A dY A^T for the tile at (oy, ox) (dY zero past Ho x Wo) and one vector of outputs:
// the transpose of output_transform.
template <int A>
static inline void output_transform_t(const float* dy, const WShape& s, int oy, int ox, float* dM,
                                      size_t xi_stride) {
  constexpr auto& at = Mats<A>::at;
  vec tmp[WM][A];
#pragma GCC unroll 4
  for (int i = 0; i < WM; ++i) {
    vec r[WM];
#pragma GCC unroll 4
    for (int j = 0; j < WM; ++j)
      r[j] = (oy + i < s.Ho && ox + j < s.Wo) ? load(dy + ((size_t)(oy + i) * s.Wo + ox + j) * s.Co) : vec{};
#pragma GCC unroll 8
    for (int l = 0; l < A; ++l) {
      vec sum{};
#pragma GCC unroll 4
      for (int j = 0; j < WM; ++j) {
        mac(sum, at[j][l], r[j]);
      }
      tmp[i][l] = sum;
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < A; ++k)
#pragma GCC unroll 8
    for (int l = 0; l < A; ++l) {
      vec sum{};
#pragma GCC unroll 4
      for (int i = 0; i < WM; ++i) {
        mac(sum, at[i][k], tmp[i][l]);
      }
      store(dM + (size_t)(k * A + l) * xi_stride, sum);
    }
}

// U[ci][co] += sum_t V[t][ci] D[t][co] for CIB rows from ci0: CIB x CB vectors in registers.
template <int CB, int CIB>
static void gemm_tn(const float* V, const float* D, float* U, int T, int Ci, int Co) {
  for (int ci0 = 0; ci0 < Ci; ci0 += CIB)
    for (int co0 = 0; co0 < Co; co0 += VL * CB) {
      vec acc[CIB][CB];
      for (int i = 0; i < CIB; ++i) for (int c = 0; c < CB; ++c) acc[i][c] = load(U + (size_t)(ci0 + i) * Co + co0 + VL * c);
      for (int t = 0; t < T; ++t) {
        vec dv[CB];
        for (int c = 0; c < CB; ++c) dv[c] = load(D + (size_t)t * Co + co0 + VL * c);
        for (int i = 0; i < CIB; ++i) {
          vec b = bcast(V[(size_t)t * Ci + ci0 + i]);
          for (int c = 0; c < CB; ++c) acc[i][c] += b * dv[c];
        }
      }
      for (int i = 0; i < CIB; ++i) for (int c = 0; c < CB; ++c) store(U + (size_t)(ci0 + i) * Co + co0 + VL * c, acc[i][c]);
    }
}

using GemmTn = void (*)(const float*, const float*, float*, int, int, int);

template <int CB>
static GemmTn pick_gemm_tn_cb() {  // CIB rows divide Ci (a multiple of 16)
  if constexpr (CB * 16 <= MAXACC) return gemm_tn<CB, 16>;
  else if constexpr (CB * 8 <= MAXACC) return gemm_tn<CB, 8>;
  else if constexpr (CB * 4 <= MAXACC) return gemm_tn<CB, 4>;
  else return gemm_tn<CB, 2>;
}

static GemmTn pick_gemm_tn(int Co) {
  int cb = co_blocks(Co);
  return cb == 4 ? pick_gemm_tn_cb<4>() : cb == 2 ? pick_gemm_tn_cb<2>() : pick_gemm_tn_cb<1>();
}

// dU[xi] += V[xi]^T dM[xi] over one image's tiles.
template <int A>
static void winograd_ugrad_image(const float* x, const float* dy, const WShape& s, GemmTn gemm_tn_fn, float* dU) {
  thread_local std::vector<float> V, M;
  const float* buf = tiled(x, s);
  V.resize((size_t)A * A * WCHUNK * s.Ci);
  M.resize((size_t)A * A * WCHUNK * s.Co);
  const int tiles = s.th * s.tw;
  for (int t0 = 0; t0 < tiles; t0 += WCHUNK) {
    const int T = std::min(WCHUNK, tiles - t0);
    input_transforms<A>(buf, s, t0, T, V.data());
    for (int t = 0; t < T; ++t) {
      const int ty = (t0 + t) / s.tw, tx = (t0 + t) % s.tw;
      for (int c = 0; c < s.Co; c += VL)
        output_transform_t<A>(dy + c, s, ty * WM, tx * WM, M.data() + (size_t)t * s.Co + c, (size_t)T * s.Co);
    }
    for (int xi = 0; xi < A * A; ++xi)
      gemm_tn_fn(V.data() + (size_t)xi * T * s.Ci, M.data() + (size_t)xi * T * s.Co, dU + (size_t)xi * s.Ci * s.Co,
                 T, s.Ci, s.Co);
  }
}

static bool winograd_shape(ffi::Span<const int64_t> xd, int a, int co, int64_t pad, WShape& s) {
  s = WShape{(int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], co, a - WM + 1, WM, a, (int)pad};
  s.Ho = s.H + 2 * s.pad - s.r + 1; s.Wo = s.W + 2 * s.pad - s.r + 1;
  s.th = (s.Ho + WM - 1) / WM; s.tw = (s.Wo + WM - 1) / WM;
  s.Hb = s.th * WM + s.r - 1; s.Wb = s.tw * WM + s.r - 1;
  return (a == 6 || a == 8) && s.Ci % VL == 0 && s.Co % VL == 0 && s.pad >= 0 && s.pad < s.r && s.Ho > 0 &&
         s.Wo > 0;
}

// x [N, H, W, Ci] and dy [N, Ho, Wo, Co] -> dU [a, a, Ci, Co], the gradient of U = G g G^T.
static ffi::Error WinogradUgrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                ffi::ResultBuffer<ffi::F32> du, int64_t pad) {
  auto ud = du->dimensions();
  WShape s;
  auto gd = dy.dimensions();
  if (!winograd_shape(x.dimensions(), (int)ud[0], (int)ud[3], pad, s) || ud[1] != s.a || ud[2] != s.Ci ||
      gd[0] != s.N || gd[1] != s.Ho || gd[2] != s.Wo || gd[3] != s.Co)
    return ffi::Error::InvalidArgument("jaxcnn Winograd convolution: unsupported shape");
  GemmTn gfn = pick_gemm_tn(s.Co);
  auto fn = s.a == 8 ? winograd_ugrad_image<8> : winograd_ugrad_image<6>;
  const size_t size = (size_t)s.a * s.a * s.Ci * s.Co;
  int parts = std::max<int>(1, std::min<int>(pool.num_threads(), s.N));
  std::vector<std::vector<float>> partial(parts, std::vector<float>(size, 0.0f));
  const float* xs = x.typed_data(); const float* gs = dy.typed_data();
  parallel_for(pool, parts, [&, s](int part) {
    for (int n = part * s.N / parts; n < (part + 1) * s.N / parts; ++n)
      fn(xs + (size_t)n * s.H * s.W * s.Ci, gs + (size_t)n * s.Ho * s.Wo * s.Co, s, gfn, partial[part].data());
  });
  float* out = du->typed_data();
  std::memcpy(out, partial[0].data(), size * sizeof(float));
  for (int p = 1; p < parts; ++p) for (size_t i = 0; i < size; ++i) out[i] += partial[p][i];
  return ffi::Error::Success();
}

// x [N, H, W, Ci] and U = G g G^T [a, a, Ci, Co] (a = 6: 3x3 kernels, 8: 5x5) -> y.
static ffi::Error WinogradFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> u,
                              ffi::ResultBuffer<ffi::F32> y, int64_t pad) {
  auto ud = u.dimensions();
  WShape s;
  if (!winograd_shape(x.dimensions(), (int)ud[0], (int)ud[3], pad, s) || ud[1] != s.a || ud[2] != s.Ci)
    return ffi::Error::InvalidArgument("jaxcnn Winograd convolution: unsupported shape");
  const float* xs = x.typed_data(); const float* us = u.typed_data(); float* ys = y->typed_data();
  auto fn = s.a == 8 ? winograd_image<8> : winograd_image<6>;
  parallel_for(pool, s.N, [=](int n) {
    fn(xs + (size_t)n * s.H * s.W * s.Ci, s, us, ys + (size_t)n * s.Ho * s.Wo * s.Co);
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_direct_forward, ConvFwd,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_direct_weight_grad, ConvDw,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_winograd_forward, WinogradFwd,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_winograd_ugrad, WinogradUgrad,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));

extern "C" int jaxcnn_direct_lanes() { return VL; }
