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

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_direct_forward, ConvFwd,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_direct_weight_grad, ConvDw,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("pad"));

extern "C" int jaxcnn_direct_lanes() { return VL; }
