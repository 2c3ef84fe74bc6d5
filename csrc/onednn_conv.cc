// oneDNN convolutions as XLA FFI custom calls: forward, gradient of the input, gradient of the kernel.
//
// Why: XLA:CPU lowers grouped, depthwise, strided-backward and tiny-spatial convolutions to slow loops
// (DESIGN.md), while oneDNN - the library PyTorch's CPU convolutions use - has JIT kernels for each. The
// Python side (jaxnets/ops/onednn.py) pairs these three calls in a jax.custom_vjp.
//
// Layouts are JAX's: activations NHWC, kernels HWIO ([kh, kw, in/groups, out]), described to oneDNN by
// strides, so nothing is transposed in XLA. Kernels are handed to oneDNN's own preferred layout by a
// reorder (letting oneDNN choose matters: forcing the HWIO layout made a depthwise call 17x slower), or by a copy
// where that layout only blocks the output channels (BlockCopy).
// A stride-1 forward that oneDNN could only compute as a gemm runs as its transpose's backward-data where that has
// a direct kernel (RunsBetterTransposed). A 1x1 convolution (stride 1, unpadded) is a matrix product, which oneDNN's
// matmul computes on JAX's layouts as they are, its kernel included: no reorder at all (MatmulPlan).
// In inference a convolution can also apply what follows it - a BatchNorm's per-channel scale and shift, a residual
// add, a ReLU or ReLU6 - as oneDNN post-ops on its accumulators (ConvForwardFused), saving XLA a pass over the output.
// In training, the kernel gradient of a convolution whose input is a BatchNorm and activation of `pre` can compute
// that input itself, from `pre` (ConvKernelGradientOfActivated), so that XLA's program need not keep it.
// Primitives are created once per shape and cached; a convolution's scratchpad is the caller's (user mode; the
// epilogue's binary primitive keeps oneDNN's own), so the same primitive may run on several XLA threads at once
// (each thread has its own scratchpad and kernel buffers).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>
#include <sys/mman.h>

#include "nanobind/nanobind.h"
#include "nanobind/stl/string.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// This XLA thread's in-order stream (on the CPU, executing on it runs the primitive and returns when done).
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// A 1x1 convolution (stride 1, unpadded) of at most this many rows (batch x height x width) runs its three passes as
// oneDNN matmuls on the buffers as they lie (MatmulPlan), its kernel never reordered. Where oneDNN runs AVX-512
// kernels: alone, with its kernel in cache, a pass ran 1.1-3.6x faster so up to 512 rows, at 0.92-1.01x at 2048-8192
// rows and at 0.65-1.12x beyond; in whole steps, where kernels come from memory, ResNeXt-50's (64 px) ran 1.20x faster
// and its eval forward 1.31x, MobileNetV2's 1.09x and 1.23x, and at 224 px level (benchmarks/results/pointwise_ab.md):
// 2048 rows. On AVX2 (where oneDNN 3.2's matmul is its JIT sgemm, not the AVX-512 brgemm) 512 rows: against 2048,
// the eval forwards of MobileNetV2 and its CIFAR form ran 1.07x and 1.14x faster, ResNeXt-50's 1.005x and CIFAR
// ResNeXt-50's 0.97x, the training steps 0.99-1.01x (pointwise_ab_avx2.md; the forwards' gains held in 4 runs). Settable
// (set_matmul_max_rows; 0: never) for that benchmark and for CPUs that move the crossover. Each call reads it once:
// its plan is cached and built under that one choice (ConvShape::Key).
bool RunsAvx512() {
  const auto avx512 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);  // honours ONEDNN_MAX_CPU_ISA
  return (static_cast<unsigned>(dnnl::get_effective_cpu_isa()) & avx512) == avx512;
}

int64_t DefaultMatmulMaxRows() { return RunsAvx512() ? 2048 : 512; }

std::atomic<int64_t>& MatmulMaxRows() {
  static std::atomic<int64_t> rows{DefaultMatmulMaxRows()};
  return rows;
}

// Where oneDNN runs AVX2 kernels, a float32 1x1 convolution of more rows than a matmul takes computes its kernel
// gradient x^T dy as oneDNN's sgemm over chunks of rows (ChunkedKernelGradient), not with oneDNN 3.2's jit_1x1:avx2
// backward-weights kernel: alone, the chunks ran ResNeXt-29's 1x1 kernel gradients (batch 64) 1.055-1.29x faster,
// ResNeXt-50's (64 px, batch 32) 1.07-1.16x and a MobileNetV2 projection 1.27x; training steps 1.005-1.035x
// (benchmarks/results/kernel_gradient_ab_*_avx2_*.md). Not with AVX-512, where oneDNN's kernel was as fast or faster at
// half of those shapes (0.88-1.17x). Settable (set_chunked_kernel_gradients) for the benchmark that compares the two;
// each call reads it.
std::atomic<bool>& ChunkedKernelGradients() {
  static std::atomic<bool> chunked{!RunsAvx512()};
  return chunked;
}

// One convolution's geometry, as the three calls see it.
struct ConvShape {
  int64_t n, h, w, c;     // input, NHWC
  int64_t oh, ow, o;      // output, NHWC
  int64_t kh, kw;         // kernel taps
  int64_t stride, groups;
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  memory::data_type type;

  // The plan cache's key; `matmul`: IsMatrixProduct() as the caller read it once (the limit may move meanwhile).
  std::string Key(const char* kind, bool matmul) const {
    std::string key = kind;
    if (matmul) key += ",matmul";
    for (int64_t v : {n, h, w, c, oh, ow, o, kh, kw, stride, groups, pad_top, pad_left, pad_bottom, pad_right,
                      static_cast<int64_t>(type)}) {
      key += ',' + std::to_string(v);
    }
    return key;
  }
  memory::desc Input() const { return {{n, c, h, w}, type, memory::format_tag::nhwc}; }
  memory::desc Output() const { return {{n, o, oh, ow}, type, memory::format_tag::nhwc}; }
  // The HWIO kernel as oneDNN's logical [groups, out/g, in/g, kh, kw] (or [out, in, kh, kw]), by strides.
  memory::desc KernelHWIO() const {
    const int64_t in_g = c / groups, out_g = o / groups;
    if (groups == 1) return {{o, c, kh, kw}, type, memory::dims{1, o, kw * c * o, c * o}};
    return {{groups, out_g, in_g, kh, kw}, type, memory::dims{out_g, 1, o, kw * in_g * o, in_g * o}};
  }
  memory::desc KernelAny() const {
    const int64_t in_g = c / groups, out_g = o / groups;
    if (groups == 1) return {{o, c, kh, kw}, type, memory::format_tag::any};
    return {{groups, out_g, in_g, kh, kw}, type, memory::format_tag::any};
  }
  // The stride-1 convolution whose backward-data is this one's forward: input and output swapped, padded so that
  // its output is this one's input (see ForwardPlan). Its kernel is this one's, flipped in space, in and out
  // channels swapped (FlipKernel).
  ConvShape Transposed() const {
    return {n, oh, ow, o, h, w, c, kh, kw, 1, groups,
            kh - 1 - pad_top, kw - 1 - pad_left, kh - 1 - pad_bottom, kw - 1 - pad_right, type};
  }
  // A 1x1 convolution of stride 1 and no padding, every pass of which is a product of [N*H*W, C] and [C, O]
  // matrices, of few enough rows to run as one (MatmulMaxRows).
  bool IsMatrixProduct() const { return IsPointwise() && n * h * w <= MatmulMaxRows().load(); }
  // The same, of any number of rows.
  bool IsPointwise() const {
    return kh == 1 && kw == 1 && stride == 1 && groups == 1 && pad_top == 0 && pad_left == 0 && pad_bottom == 0 &&
           pad_right == 0;
  }
  // The activations as rows of `channels` (n * h * w rows), and the kernel as a [C, O] matrix or its transpose,
  // all by strides over the NHWC and HWIO buffers (IsMatrixProduct only).
  memory::desc Rows(int64_t channels) const { return {{n * h * w, channels}, type, memory::format_tag::ab}; }
  memory::desc RowsTransposed(int64_t channels) const {
    return {{channels, n * h * w}, type, memory::dims{1, channels}};
  }
  memory::desc KernelMatrix() const { return {{c, o}, type, memory::format_tag::ab}; }
  memory::desc KernelMatrixTransposed() const { return {{o, c}, type, memory::dims{1, o}}; }
  memory::dims Strides() const { return {stride, stride}; }
  memory::dims PadBegin() const { return {pad_top, pad_left}; }
  memory::dims PadEnd() const { return {pad_bottom, pad_right}; }
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const ConvShape& s) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, s.Input(),
          s.KernelAny(), s.Output(), s.Strides(), s.PadBegin(), s.PadEnd(), UserScratchpad()};
}

// What a fused forward applies to the convolution z, in this order: y = activation(z * scale + shift + residual),
// scale and shift per output channel (float32), the residual shaped like y.
struct Epilogue {
  enum Activation : int64_t { kNone = 0, kRelu = 1, kRelu6 = 2 };
  bool residual;
  int64_t activation;

  std::string Key() const { return ",epilogue," + std::to_string(residual) + ',' + std::to_string(activation); }
  // The scale's and shift's desc (float32 [channels]), shaped for a tensor of `dims` dimensions (a convolution's
  // NHWC 4, a matmul's 2) whose last axis they apply along.
  static memory::desc PerChannel(int64_t channels, int dims = 4) {
    if (dims == 2) return {{1, channels}, memory::data_type::f32, memory::format_tag::ab};
    return {{1, channels, 1, 1}, memory::data_type::f32, memory::format_tag::nchw};
  }
  // The argument id of a post-op's input.
  static int PostOpInput(int index) { return DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | DNNL_ARG_SRC_1; }
  // As post-ops: the multiplication by scale first unless `scaled` (a binary primitive whose own operation it is),
  // then the others.
  // `output`: the desc of the tensor they apply to (a convolution's or a matmul's output), of `channels` channels.
  dnnl::post_ops PostOps(int64_t channels, const memory::desc& output, bool scaled = false) const {
    const memory::desc per_channel = PerChannel(channels, output.get_ndims());
    dnnl::post_ops ops;
    if (!scaled) ops.append_binary(dnnl::algorithm::binary_mul, per_channel);
    ops.append_binary(dnnl::algorithm::binary_add, per_channel);
    if (residual) ops.append_binary(dnnl::algorithm::binary_add, output);
    if (activation == kRelu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    if (activation == kRelu6) ops.append_eltwise(dnnl::algorithm::eltwise_clip_v2, 0.f, 6.f);
    return ops;
  }
};

dnnl::convolution_forward::primitive_desc FusedForwardDesc(const ConvShape& s, const Epilogue& e) {
  dnnl::primitive_attr attr = UserScratchpad();
  attr.set_post_ops(e.PostOps(s.o, s.Output()));
  return {Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, s.Input(),
          s.KernelAny(), s.Output(), s.Strides(), s.PadBegin(), s.PadEnd(), attr};
}

// Where oneDNN wants a kernel blocked along its output channels only, in blocks of at least 128 bytes (AVX-512's
// 1x1 and brgemm forwards: Acdb48a, Acdb64a, grouped aBdec64b; AVX2's grouped aBdec32b), the reorder from HWIO -
// whose output channels are contiguous - is a copy of one block's channels at a time. oneDNN 3.2's reorder
// (jit:uni) moved a ResNeXt-50 kernel into Acdb48a or Acdb64a at 4-9 GB/s from memory; these copies, in the
// source's order on OpenMP's threads, at 13-16 GB/s (benchmarks/README.md). oneDNN moves smaller blocks (AVX2's
// Acdb24a, Acdb16a) as fast or faster.
struct BlockCopy {
  int blocked_dim;  // the kernel desc's output-channel dimension: 0, or 1 when grouped ([groups, out/g, ...])
  int64_t block;
  memory::dims dims, from_strides, to_strides;  // in elements; to_strides count whole blocks along blocked_dim
  std::vector<int> outer;  // the other dimensions, outermost first in the source (HWIO)
  size_t element_size;
};

std::optional<BlockCopy> BlockCopyInto(const memory::desc& hwio, const memory::desc& to) {
  if (to.get_format_kind() != memory::format_kind::blocked || to.get_inner_nblks() != 1) return std::nullopt;
  const int blocked_dim = static_cast<int>(to.get_inner_idxs()[0]);
  const int64_t block = to.get_inner_blks()[0];
  const size_t element_size = memory::data_type_size(to.get_data_type());
  const memory::dims dims = to.get_dims(), padded = to.get_padded_dims(), from_strides = hwio.get_strides();
  if (from_strides[blocked_dim] != 1 || block * element_size < 128 || to.get_submemory_offset() != 0) {
    return std::nullopt;
  }
  size_t padded_size = element_size;
  std::vector<int> outer;
  for (int d = 0; d < static_cast<int>(dims.size()); ++d) {
    padded_size *= padded[d];
    if (d == blocked_dim) continue;
    if (padded[d] != dims[d]) return std::nullopt;
    outer.push_back(d);
  }
  if (padded[blocked_dim] % block || to.get_size() != padded_size) return std::nullopt;  // no extra buffers
  std::sort(outer.begin(), outer.end(), [&](int a, int b) { return from_strides[a] > from_strides[b]; });
  return BlockCopy{blocked_dim, block, dims, from_strides, to.get_strides(), std::move(outer), element_size};
}

// Each block's channels at one position of the other dimensions is one run: read in HWIO's order (the blocks
// innermost), written to their blocks; the padding past the last channel is zeroed, as oneDNN's reorder does.
void CopyBlocks(const BlockCopy& copy, const void* hwio, void* blocked) {
  const auto* from = static_cast<const uint8_t*>(hwio);
  auto* to = static_cast<uint8_t*>(blocked);
  const int64_t channels = copy.dims[copy.blocked_dim];
  const int64_t blocks = (channels + copy.block - 1) / copy.block;
  int64_t runs = blocks;
  for (int d : copy.outer) runs *= copy.dims[d];
#pragma omp parallel for schedule(static)
  for (int64_t run = 0; run < runs; ++run) {
    const int64_t block = run % blocks;
    int64_t rest = run / blocks;
    int64_t at = block * copy.block, into = block * copy.to_strides[copy.blocked_dim];
    for (auto d = copy.outer.rbegin(); d != copy.outer.rend(); ++d) {
      const int64_t index = rest % copy.dims[*d];
      rest /= copy.dims[*d];
      at += index * copy.from_strides[*d];
      into += index * copy.to_strides[*d];
    }
    const int64_t valid = std::min(copy.block, channels - block * copy.block);
    std::memcpy(to + into * copy.element_size, from + at * copy.element_size, valid * copy.element_size);
    if (valid < copy.block) {
      std::memset(to + (into + valid) * copy.element_size, 0, (copy.block - valid) * copy.element_size);
    }
  }
}

// A matmul plan's operands, in the order oneDNN names them (src x weights = dst), as the pass's buffers are viewed.
struct MatmulOperands {
  memory::desc src, weights, dst;
};

// What one call needs, built once per shape: the primitive and the kernel's reorder to or from HWIO.
struct Plan {
  dnnl::primitive primitive;  // the convolution, or (where `matmul` is set) the matrix product
  memory::desc kernel_desc;  // the layout oneDNN chose for the kernel (or its gradient)
  memory::desc scratchpad_desc;
  bool kernel_reordered = false;
  dnnl::reorder kernel_reorder;          // unless the kernel is copied instead:
  std::optional<BlockCopy> kernel_copy;  // HWIO into kernel_desc by runs, where BlockCopyInto finds that it can
  // Forward only: where set, the forward runs as this input-gradient plan of Transposed() (and nothing above is).
  std::shared_ptr<const Plan> transposed_input_gradient;
  // Fused forward only: where set, the convolution runs by this plain forward plan, and then `epilogue` (a binary
  // primitive, in place on the output) applies the epilogue.
  std::shared_ptr<const Plan> unfused_forward;
  dnnl::primitive epilogue;
  // Where set, `primitive` is a matmul of these operands, and nothing above the scratchpad is.
  std::optional<MatmulOperands> matmul;
};

template <typename Build>
std::shared_ptr<const Plan> CachedPlan(const std::string& key, Build build) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<const Plan>> plans;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = plans.find(key);
    if (found != plans.end()) return found->second;
  }
  auto plan = std::make_shared<const Plan>(build());  // built outside the lock: creation can take ms
  std::lock_guard<std::mutex> lock(mutex);
  return plans.emplace(key, plan).first->second;
}

// A plan around `conv`, whose kernel (or, for the kernel gradient, `kernel_is_result`) oneDNN wants in `chosen`:
// with a reorder from HWIO into it (or out of it into HWIO) unless it is HWIO already.
Plan MakePlan(const ConvShape& s, dnnl::primitive conv, const memory::desc& chosen, const memory::desc& scratchpad,
              bool kernel_is_result) {
  Plan plan{conv, chosen, scratchpad};
  if (chosen != s.KernelHWIO()) {
    plan.kernel_reordered = true;
    const memory::desc& from = kernel_is_result ? chosen : s.KernelHWIO();
    const memory::desc& to = kernel_is_result ? s.KernelHWIO() : chosen;
    if (!kernel_is_result) plan.kernel_copy = BlockCopyInto(from, to);
    if (!plan.kernel_copy) {
      plan.kernel_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
    }
  }
  return plan;
}

// A pass of a 1x1 convolution as oneDNN's matmul src x weights = dst, over the pass's own buffers, with `attr`'s
// post-ops; none where oneDNN has no such matmul here (or only its reference loops). On AVX-512 oneDNN 3.2 runs
// these as brgemm and on AVX2 as its JIT sgemm, reading the kernel where it lies, where the convolution's kernels
// want it reordered into blocks first (and back, for the kernel gradient).
std::optional<Plan> MatmulPlan(const MatmulOperands& operands, dnnl::primitive_attr attr = UserScratchpad()) {
  std::optional<dnnl::matmul::primitive_desc> pd;
  try {
    pd.emplace(Engine(), operands.src, operands.weights, operands.dst, attr);
  } catch (const dnnl::error&) {
    return std::nullopt;
  }
  if (std::string(pd->impl_info_str()).rfind("ref", 0) == 0) return std::nullopt;
  Plan plan;
  plan.primitive = dnnl::matmul(*pd);
  plan.scratchpad_desc = pd->scratchpad_desc();
  plan.matmul = operands;
  return plan;
}

dnnl::convolution_backward_data::primitive_desc InputGradientDesc(const ConvShape& s) {
  return {Engine(), dnnl::algorithm::convolution_direct, s.Input(), s.KernelAny(), s.Output(), s.Strides(),
          s.PadBegin(), s.PadEnd(), ForwardDesc(s), UserScratchpad()};
}

std::shared_ptr<const Plan> InputGradientPlan(const ConvShape& s) {
  const bool matmul = s.IsMatrixProduct();
  return CachedPlan(s.Key("dx", matmul), [&] {
    if (matmul) {  // dx = dy x kernel^T
      if (auto plan = MatmulPlan({s.Rows(s.o), s.KernelMatrixTransposed(), s.Rows(s.c)})) return *std::move(plan);
    }
    auto pd = InputGradientDesc(s);
    return MakePlan(s, dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc(), false);
  });
}

bool IsGemm(const dnnl::primitive_desc_base& pd) {
  return std::string(pd.impl_info_str()).find("gemm") != std::string::npos;
}

// A JIT kernel of oneDNN's own: neither an im2col + gemm nor the reference loops.
bool IsDirect(const dnnl::primitive_desc_base& pd) {
  return !IsGemm(pd) && std::string(pd.impl_info_str()).rfind("ref", 0) != 0;
}

// Where oneDNN has no direct kernel for a forward convolution, it computes it as an im2col + gemm, several times
// slower: oneDNN 3.2 does so on AVX2 for grouped convolutions with 4 channels per group (ResNeXt's first stage,
// 2.6x slower than PyTorch's oneDNN 3.12), while its backward-data kernel for the same groups is direct. A
// stride-1 convolution is the backward-data of its transpose, so such a forward runs as that where the
// transpose's backward-data gets a direct kernel (and padding below the kernel's size keeps it a convolution).
bool RunsBetterTransposed(const ConvShape& s, const dnnl::convolution_forward::primitive_desc& pd) {
  if (s.stride != 1 || !IsGemm(pd)) return false;
  for (int64_t pad : {s.pad_top, s.pad_bottom}) {
    if (pad < 0 || pad >= s.kh) return false;
  }
  for (int64_t pad : {s.pad_left, s.pad_right}) {
    if (pad < 0 || pad >= s.kw) return false;
  }
  try {
    return IsDirect(InputGradientDesc(s.Transposed()));
  } catch (const dnnl::error&) {  // no backward-data for the transpose: the forward stays as oneDNN has it
    return false;
  }
}

std::shared_ptr<const Plan> ForwardPlan(const ConvShape& s) {
  const bool matmul = s.IsMatrixProduct();
  return CachedPlan(s.Key("fwd", matmul), [&] {
    if (matmul) {  // y = x x kernel
      if (auto plan = MatmulPlan({s.Rows(s.c), s.KernelMatrix(), s.Rows(s.o)})) return *std::move(plan);
    }
    auto pd = ForwardDesc(s);
    if (RunsBetterTransposed(s, pd)) {
      Plan plan;
      plan.transposed_input_gradient = InputGradientPlan(s.Transposed());
      return plan;
    }
    return MakePlan(s, dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc(), false);
  });
}

// A fused forward is one convolution with post-ops where oneDNN has a direct kernel for it, and the plain forward
// does not run transposed (RunsBetterTransposed: backward-data takes no post-ops). Otherwise it is the plain forward
// and one pass of oneDNN's binary primitive: oneDNN 3.2's gemm convolution applies binary post-ops slowly (CIFAR
// MobileNetV2's padded 1x1 stem, 3 -> 32 channels at 34x34, batch 64: 134-160 ms with them, 2 ms without).
std::shared_ptr<const Plan> FusedForwardPlan(const ConvShape& s, const Epilogue& e) {
  const bool matmul = s.IsMatrixProduct();
  return CachedPlan(s.Key("fused", matmul) + e.Key(), [&] {
    if (matmul) {
      const MatmulOperands operands{s.Rows(s.c), s.KernelMatrix(), s.Rows(s.o)};
      dnnl::primitive_attr attr = UserScratchpad();
      attr.set_post_ops(e.PostOps(s.o, operands.dst));
      if (auto plan = MatmulPlan(operands, attr)) return *std::move(plan);
    }
    auto plain = ForwardPlan(s);
    std::optional<dnnl::convolution_forward::primitive_desc> pd;
    try {
      pd = FusedForwardDesc(s, e);
    } catch (const dnnl::error&) {  // these post-ops unsupported for this convolution: separately, below
    }
    if (pd && IsDirect(*pd) && !plain->transposed_input_gradient) {
      return MakePlan(s, dnnl::convolution_forward(*pd), pd->weights_desc(), pd->scratchpad_desc(), false);
    }
    dnnl::primitive_attr attr;
    attr.set_post_ops(e.PostOps(s.o, s.Output(), /*scaled=*/true));
    Plan plan;
    plan.unfused_forward = plain;
    plan.epilogue = dnnl::binary(dnnl::binary::primitive_desc(Engine(), dnnl::algorithm::binary_mul, s.Output(),
                                                              Epilogue::PerChannel(s.o), s.Output(), attr));
    return plan;
  });
}

std::shared_ptr<const Plan> KernelGradientPlan(const ConvShape& s) {
  const bool matmul = s.IsMatrixProduct();
  return CachedPlan(s.Key("dw", matmul), [&] {
    if (matmul) {  // dkernel = x^T x dy
      if (auto plan = MatmulPlan({s.RowsTransposed(s.c), s.Rows(s.o), s.KernelMatrix()})) return *std::move(plan);
    }
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, s.Input(), s.KernelAny(), s.Output(), s.Strides(),
        s.PadBegin(), s.PadEnd(), ForwardDesc(s), UserScratchpad());
    return MakePlan(s, dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc(), true);
  });
}

// A buffer grown as needed and reused, aligned to a page: oneDNN's kernels load and store whole vector registers,
// and a buffer from plain malloc (16-byte aligned) made the 1x1 kernel-gradient kernel take 9 ms instead of 6.8
// (PyTorch: 6.7) on AVX2, its partial sums straddling cache lines. From 2 MiB on, a buffer asks for transparent
// huge pages (where the kernel grants them on request): an 8 MiB ResNeXt-50 kernel then takes 4 TLB entries, not
// 2048, and ResNeXt-50's eval forward (64 px, AVX2) took 174-181 ms a call instead of 184-189.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { Release(); }

  void* Sized(size_t bytes) {
    if (bytes <= capacity_) return data_;
    Release();
    if (bytes >= kHugePage) {
      // Mapped by itself, never from malloc's heap: the huge-page advice must not outlive the buffer on memory
      // that malloc hands out again (huge-page faults there can stall on compaction).
      const size_t rounded = RoundUp(bytes, kHugePage);
      void* data = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (data == MAP_FAILED) throw std::bad_alloc();
      madvise(data, rounded, MADV_HUGEPAGE);  // a hint: errors ignored
      data_ = data, capacity_ = rounded, mapped_ = true;
    } else {
      const size_t rounded = RoundUp(bytes, kPage);
      void* data = std::aligned_alloc(kPage, rounded);
      if (data == nullptr) throw std::bad_alloc();
      data_ = data, capacity_ = rounded, mapped_ = false;
    }
    return data_;
  }

 private:
  static constexpr size_t kPage = 4096, kHugePage = 2 << 20;
  static size_t RoundUp(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }
  void Release() {
    if (mapped_) {
      munmap(data_, capacity_);
    } else {
      std::free(data_);  // nullptr when nothing was allocated yet
    }
    data_ = nullptr, capacity_ = 0, mapped_ = false;
  }

  void* data_ = nullptr;
  size_t capacity_ = 0;
  bool mapped_ = false;
};

// Per-thread buffers for the reordered (or flipped) kernel and the scratchpad.
struct Buffers {
  AlignedBuffer kernel, scratchpad, flipped_kernel;
};
thread_local Buffers buffers;

ffi::ErrorOr<memory::data_type> DataType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    default: return ffi::Unexpected(ffi::Error::InvalidArgument("jaxnets oneDNN convolution: float32 or bfloat16 only"));
  }
}

// x: [N, H, W, C]; kernel: [kh, kw, C/groups, O]; y: [N, Ho, Wo, O].
ffi::ErrorOr<ConvShape> Shape(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer y, int64_t stride,
                              int64_t groups, int64_t pad_top, int64_t pad_left, int64_t pad_bottom,
                              int64_t pad_right) {
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("jaxnets oneDNN convolution: arrays must be 4-D (NHWC, HWIO)"));
  }
  if (groups < 1 || xd[3] != kd[2] * groups || yd[3] != kd[3] || yd[3] % groups || xd[0] != yd[0] ||
      kernel.element_type() != x.element_type() || y.element_type() != x.element_type()) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "jaxnets oneDNN convolution: input, kernel and output do not fit each other (channels, groups, batch or "
        "dtype)"));
  }
  auto type = DataType(x.element_type());
  if (type.has_error()) return ffi::Unexpected(type.error());
  return ConvShape{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kd[0], kd[1], stride, groups,
                   pad_top, pad_left, pad_bottom, pad_right, *type};
}

void Run(const Plan& plan, std::unordered_map<int, memory> args) {
  dnnl::stream& stream = Stream();
  args[DNNL_ARG_SCRATCHPAD] =
      memory(plan.scratchpad_desc, Engine(), buffers.scratchpad.Sized(plan.scratchpad_desc.get_size()));
  plan.primitive.execute(stream, args);
  stream.wait();
}

// A matmul plan (Plan::matmul) on the pass's buffers, with `args` (post-op inputs) besides.
void RunMatmul(const Plan& plan, void* src, void* weights, void* dst, std::unordered_map<int, memory> args = {}) {
  args[DNNL_ARG_SRC] = memory(plan.matmul->src, Engine(), src);
  args[DNNL_ARG_WEIGHTS] = memory(plan.matmul->weights, Engine(), weights);
  args[DNNL_ARG_DST] = memory(plan.matmul->dst, Engine(), dst);
  Run(plan, std::move(args));
}

#define JAXNETS_CONV_ATTRS                                                                            \
  .Attr<int64_t>("stride").Attr<int64_t>("groups").Attr<int64_t>("pad_top").Attr<int64_t>("pad_left") \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_right")

// The kernel in the layout a plan wants: the HWIO buffer itself, or its reorder into a per-thread buffer.
memory KernelFor(const Plan& plan, const ConvShape& s, void* hwio) {
  memory user(s.KernelHWIO(), Engine(), hwio);
  if (!plan.kernel_reordered) return user;
  void* buffer = buffers.kernel.Sized(plan.kernel_desc.get_size());
  if (plan.kernel_copy) {
    CopyBlocks(*plan.kernel_copy, hwio, buffer);
    return memory(plan.kernel_desc, Engine(), buffer);
  }
  memory chosen(plan.kernel_desc, Engine(), buffer);
  dnnl::stream& stream = Stream();
  plan.kernel_reorder.execute(stream, user, chosen);
  stream.wait();
  return chosen;
}

// dx = the input gradient of convolution `s` given dy, with its HWIO kernel, by `plan` (InputGradientPlan(s)).
void RunInputGradient(const Plan& plan, const ConvShape& s, void* dy, void* kernel, void* dx) {
  if (plan.matmul) return RunMatmul(plan, dy, kernel, dx);
  Run(plan, {{DNNL_ARG_DIFF_DST, memory(s.Output(), Engine(), dy)},
             {DNNL_ARG_WEIGHTS, KernelFor(plan, s, kernel)},
             {DNNL_ARG_DIFF_SRC, memory(s.Input(), Engine(), dx)}});
}

// `s`'s HWIO kernel as s.Transposed()'s HWIO kernel, into a per-thread buffer: flipped in space, and within each
// group its in and out channels swapped. Kernels are small (a grouped 3x3 of 128 channels: 4,608 values).
void* FlipKernel(const ConvShape& s, const void* hwio) {
  const int64_t in_g = s.c / s.groups, out_g = s.o / s.groups;
  const size_t size = memory::data_type_size(s.type);
  const auto* from = static_cast<const uint8_t*>(hwio);
  auto* to = static_cast<uint8_t*>(buffers.flipped_kernel.Sized(s.kh * s.kw * in_g * s.o * size));
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t j = 0; j < s.kw; ++j)
      for (int64_t g = 0; g < s.groups; ++g)
        for (int64_t co = 0; co < out_g; ++co)      // an output channel of `s`: an input channel of the transpose
          for (int64_t ci = 0; ci < in_g; ++ci) {   // an input channel of `s`: an output channel of the transpose
            const int64_t at = (((s.kh - 1 - i) * s.kw + (s.kw - 1 - j)) * in_g + ci) * s.o + g * out_g + co;
            const int64_t into = ((i * s.kw + j) * out_g + co) * s.c + g * in_g + ci;
            std::memcpy(to + into * size, from + at * size, size);
          }
  return to;
}

// y = the convolution `s` of x, by `plan` (ForwardPlan(s)).
void RunForward(const Plan& plan, const ConvShape& s, void* x, void* kernel, void* y) {
  if (plan.matmul) {
    RunMatmul(plan, x, kernel, y);
  } else if (plan.transposed_input_gradient) {
    RunInputGradient(*plan.transposed_input_gradient, s.Transposed(), x, FlipKernel(s, kernel), y);
  } else {
    Run(plan, {{DNNL_ARG_SRC, memory(s.Input(), Engine(), x)},
               {DNNL_ARG_WEIGHTS, KernelFor(plan, s, kernel)},
               {DNNL_ARG_DST, memory(s.Output(), Engine(), y)}});
  }
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y, int64_t stride,
                       int64_t groups, int64_t pad_top, int64_t pad_left, int64_t pad_bottom, int64_t pad_right) {
  auto s = Shape(x, kernel, *y, stride, groups, pad_top, pad_left, pad_bottom, pad_right);
  if (s.has_error()) return s.error();
  try {
    RunForward(*ForwardPlan(*s), *s, x.untyped_data(), kernel.untyped_data(), y->untyped_data());
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc growing a buffer: never into XLA
    return ffi::Error::Internal(std::string("oneDNN convolution forward: ") + e.what());
  }
  return ffi::Error::Success();
}

// y = activation(conv(x, kernel) * scale + shift [+ residual]): scale and shift float32 [O], the residual (the
// one remaining argument, or none) shaped and typed like y.
ffi::Error FusedForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                            ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t groups,
                            int64_t pad_top, int64_t pad_left, int64_t pad_bottom, int64_t pad_right,
                            int64_t activation) {
  auto s = Shape(x, kernel, *y, stride, groups, pad_top, pad_left, pad_bottom, pad_right);
  if (s.has_error()) return s.error();
  std::optional<ffi::AnyBuffer> residual;
  if (rest.size() == 1) {
    auto r = rest.get<ffi::AnyBuffer>(0);
    if (r.has_error()) return r.error();
    residual = *r;
  }
  auto is_per_channel = [&](const ffi::AnyBuffer& b) {
    return b.element_type() == ffi::DataType::F32 && b.dimensions().size() == 1 && b.dimensions()[0] == s->o;
  };
  if (rest.size() > 1 || !is_per_channel(scale) || !is_per_channel(shift) ||
      (residual && (residual->element_type() != y->element_type() ||
                    !std::equal(residual->dimensions().begin(), residual->dimensions().end(),
                                y->dimensions().begin(), y->dimensions().end()))) ||
      activation < Epilogue::kNone || activation > Epilogue::kRelu6) {
    return ffi::Error::InvalidArgument(
        "jaxnets oneDNN fused convolution: scale and shift must be float32 [out channels], the residual (optional) "
        "like the output, the activation 0 (none), 1 (ReLU) or 2 (ReLU6)");
  }
  const Epilogue e{residual.has_value(), activation};
  try {
    auto plan = FusedForwardPlan(*s, e);
    std::unordered_map<int, memory> post_op_inputs;
    // The post-ops' inputs are described like the output they apply to: a matmul's [rows, O], or NHWC.
    const memory::desc output_desc = plan->matmul ? plan->matmul->dst : s->Output();
    const memory::desc per_channel = Epilogue::PerChannel(s->o, output_desc.get_ndims());
    // A fused convolution's post-ops are [scale, shift, residual]; the epilogue primitive's [shift, residual].
    const int first = plan->unfused_forward ? -1 : 0;
    if (first == 0) post_op_inputs[Epilogue::PostOpInput(0)] = memory(per_channel, Engine(), scale.untyped_data());
    post_op_inputs[Epilogue::PostOpInput(first + 1)] = memory(per_channel, Engine(), shift.untyped_data());
    if (residual) {
      post_op_inputs[Epilogue::PostOpInput(first + 2)] = memory(output_desc, Engine(), residual->untyped_data());
    }
    memory output(s->Output(), Engine(), y->untyped_data());
    if (plan->unfused_forward) {
      RunForward(*plan->unfused_forward, *s, x.untyped_data(), kernel.untyped_data(), y->untyped_data());
      post_op_inputs[DNNL_ARG_SRC_0] = output;
      post_op_inputs[DNNL_ARG_SRC_1] = memory(per_channel, Engine(), scale.untyped_data());
      post_op_inputs[DNNL_ARG_DST] = output;
      dnnl::stream& stream = Stream();
      plan->epilogue.execute(stream, post_op_inputs);
      stream.wait();
    } else if (plan->matmul) {
      RunMatmul(*plan, x.untyped_data(), kernel.untyped_data(), y->untyped_data(), std::move(post_op_inputs));
    } else {
      post_op_inputs[DNNL_ARG_SRC] = memory(s->Input(), Engine(), x.untyped_data());
      post_op_inputs[DNNL_ARG_WEIGHTS] = KernelFor(*plan, *s, kernel.untyped_data());
      post_op_inputs[DNNL_ARG_DST] = output;
      Run(*plan, std::move(post_op_inputs));
    }
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc growing a buffer: never into XLA
    return ffi::Error::Internal(std::string("oneDNN fused convolution forward: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error InputGradientImpl(ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx,
                             int64_t stride, int64_t groups, int64_t pad_top, int64_t pad_left, int64_t pad_bottom,
                             int64_t pad_right) {
  auto s = Shape(*dx, kernel, dy, stride, groups, pad_top, pad_left, pad_bottom, pad_right);
  if (s.has_error()) return s.error();
  try {
    RunInputGradient(*InputGradientPlan(*s), *s, dy.untyped_data(), kernel.untyped_data(), dx->untyped_data());
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc growing a buffer: never into XLA
    return ffi::Error::Internal(std::string("oneDNN convolution input gradient: ") + e.what());
  }
  return ffi::Error::Success();
}

// How ChunkedKernelGradient divides the work. Each sgemm takes at most kChunkRows rows of x and dy: a chunk of both
// (1 MiB at 128 channels each) stays in the caches while the sgemm packs and multiplies it (512 and 2048 timed alike
// at ResNeXt-29's shapes). The rows are split into at most kMostRowGroups runs of at least kFewestRows rows, each
// summed into a [C, O] of its own, which are then added up; more threads than that split the output's columns too,
// at least kFewestColumns each, so that the sums' buffers stay at most 3 x [C, O] however many cores there are.
constexpr int64_t kChunkRows = 1024, kMostRowGroups = 4, kFewestRows = 256, kFewestColumns = 64;

// dkernel [C, O] = x^T dy for a 1x1 convolution (IsPointwise; float32), x and dy as their [rows, C] and [rows, O]
// matrices, on OpenMP's threads: thread (g, b) sums, chunk after chunk (dnnl_sgemm, one thread each), run of rows g
// into columns b of its run's sum (run 0's is dkernel itself); after a barrier every thread adds the other runs' sums
// into its slice of dkernel. The sums' order depends on the shape and on the number of threads in the team only: with
// the same OpenMP settings a call gives the same bits again.
void ChunkedKernelGradient(const ConvShape& s, const float* x, const float* dy, float* dkernel) {
  const int64_t rows = s.n * s.h * s.w, size = s.c * s.o;
  if (rows == 0) return std::fill(dkernel, dkernel + size, 0.0f);
  const int64_t most_runs = std::min(kMostRowGroups, std::max<int64_t>(1, rows / kFewestRows));
  auto* partial = static_cast<float*>(buffers.scratchpad.Sized((most_runs - 1) * size * sizeof(float)));
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(omp_get_max_threads())
  {
    const int64_t thread = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t runs = std::min(most_runs, threads);
    const int64_t blocks = std::max<int64_t>(1, std::min(threads / runs, s.o / kFewestColumns));
    if (thread < runs * blocks) {  // (the rest only help to add the sums up)
      const int64_t run = thread / blocks, block = thread % blocks;
      float* sum = run == 0 ? dkernel : partial + (run - 1) * size;
      const int64_t first_row = rows * run / runs, end_row = rows * (run + 1) / runs;
      const int64_t first_column = s.o * block / blocks, columns = s.o * (block + 1) / blocks - first_column;
      for (int64_t row = first_row; row < end_row; row += kChunkRows) {
        const int64_t count = std::min(kChunkRows, end_row - row);
        const float keep = row == first_row ? 0.0f : 1.0f;  // (sgemm's beta)
        if (dnnl_sgemm('T', 'N', s.c, columns, count, 1.0f, x + row * s.c, s.c, dy + row * s.o + first_column, s.o,
                       keep, sum + first_column, s.o) != dnnl_success) {
          failed = true;
        }
      }
    }
#pragma omp barrier
    const int64_t from = size * thread / threads, to = size * (thread + 1) / threads;
    for (int64_t other = 1; other < runs; ++other) {
      const float* add = partial + (other - 1) * size;
      for (int64_t i = from; i < to; ++i) dkernel[i] += add[i];
    }
  }
  if (failed) throw std::runtime_error("dnnl_sgemm failed");
}

// dkernel = the kernel gradient of convolution `s` at input x, given dy, by KernelGradientPlan(s).
void RunKernelGradient(const ConvShape& s, void* x, void* dy, void* dkernel) {
  if (s.type == memory::data_type::f32 && s.IsPointwise() && !s.IsMatrixProduct() && ChunkedKernelGradients().load()) {
    return ChunkedKernelGradient(s, static_cast<const float*>(x), static_cast<const float*>(dy),
                                 static_cast<float*>(dkernel));
  }
  auto plan = KernelGradientPlan(s);
  if (plan->matmul) return RunMatmul(*plan, x, dy, dkernel);
  memory user(s.KernelHWIO(), Engine(), dkernel);
  memory computed = plan->kernel_reordered
                        ? memory(plan->kernel_desc, Engine(), buffers.kernel.Sized(plan->kernel_desc.get_size()))
                        : user;
  Run(*plan, {{DNNL_ARG_SRC, memory(s.Input(), Engine(), x)},
              {DNNL_ARG_DIFF_DST, memory(s.Output(), Engine(), dy)},
              {DNNL_ARG_DIFF_WEIGHTS, computed}});
  if (plan->kernel_reordered) {
    dnnl::stream& stream = Stream();
    plan->kernel_reorder.execute(stream, computed, user);
    stream.wait();
  }
}

ffi::Error KernelGradientImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel,
                              int64_t stride, int64_t groups, int64_t pad_top, int64_t pad_left, int64_t pad_bottom,
                              int64_t pad_right) {
  auto s = Shape(x, *dkernel, dy, stride, groups, pad_top, pad_left, pad_bottom, pad_right);
  if (s.has_error()) return s.error();
  try {
    RunKernelGradient(*s, x.untyped_data(), dy.untyped_data(), dkernel->untyped_data());
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc growing a buffer: never into XLA
    return ffi::Error::Internal(std::string("oneDNN convolution kernel gradient: ") + e.what());
  }
  return ffi::Error::Success();
}

// activation(pre * scale + shift) over the input of `s` (scale and shift float32 [C]): an epilogue without residual on
// the input, as one pass of oneDNN's binary primitive (its JIT kernels: a plain C++ loop was not vectorised, and took
// 14 ms where XLA's pass takes 0.8). As the inference epilogue's activations, oneDNN's ReLU and ReLU6 may turn a NaN
// into 0.
std::shared_ptr<const Plan> InputActivationPlan(const ConvShape& s, int64_t activation) {
  const Epilogue e{false, activation};
  return CachedPlan(s.Key("activate", false) + e.Key(), [&] {
    dnnl::primitive_attr attr = UserScratchpad();
    attr.set_post_ops(e.PostOps(s.c, s.Input(), /*scaled=*/true));
    dnnl::binary::primitive_desc pd(Engine(), dnnl::algorithm::binary_mul, s.Input(), Epilogue::PerChannel(s.c),
                                    s.Input(), attr);
    Plan plan{dnnl::binary(pd)};
    plan.scratchpad_desc = pd.scratchpad_desc();
    return plan;
  });
}

// dkernel = the kernel gradient of convolution `s` at input activation(pre * scale + shift) (float32; scale and
// shift [C]), given dy. The input is computed here, where training would otherwise keep it from the forward beside
// `pre` (jaxnets.ops.onednn.conv2d_of_activated: the backward of a convolution after a BatchNorm and activation).
// `activated`: a second result shaped like `pre`, where the input is computed (XLA allocates it, and counts it in
// the program's scratch; nothing reads it after the call).
ffi::Error KernelGradientOfActivatedImpl(ffi::AnyBuffer pre, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                                         ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel,
                                         ffi::Result<ffi::AnyBuffer> activated, int64_t stride, int64_t groups,
                                         int64_t pad_top, int64_t pad_left, int64_t pad_bottom, int64_t pad_right,
                                         int64_t activation) {
  auto s = Shape(pre, *dkernel, dy, stride, groups, pad_top, pad_left, pad_bottom, pad_right);
  if (s.has_error()) return s.error();
  auto is_per_channel = [&](const ffi::AnyBuffer& b) {
    return b.element_type() == ffi::DataType::F32 && b.dimensions().size() == 1 && b.dimensions()[0] == s->c;
  };
  const auto pre_dims = pre.dimensions(), activated_dims = activated->dimensions();
  if (pre.element_type() != ffi::DataType::F32 || !is_per_channel(scale) || !is_per_channel(shift) ||
      activated->element_type() != ffi::DataType::F32 ||
      !std::equal(pre_dims.begin(), pre_dims.end(), activated_dims.begin(), activated_dims.end()) ||
      activation < Epilogue::kNone || activation > Epilogue::kRelu6) {
    return ffi::Error::InvalidArgument(
        "jaxnets oneDNN kernel gradient of an activated input: float32 only, scale and shift float32 [in "
        "channels], the second result shaped like the input, the activation 0 (none), 1 (ReLU) or 2 (ReLU6)");
  }
  try {
    const memory::desc per_channel = Epilogue::PerChannel(s->c);
    void* x = activated->untyped_data();
    Run(*InputActivationPlan(*s, activation),
        {{DNNL_ARG_SRC_0, memory(s->Input(), Engine(), pre.untyped_data())},
         {DNNL_ARG_SRC_1, memory(per_channel, Engine(), scale.untyped_data())},
         {Epilogue::PostOpInput(0), memory(per_channel, Engine(), shift.untyped_data())},
         {DNNL_ARG_DST, memory(s->Input(), Engine(), x)}});
    RunKernelGradient(*s, x, dy.untyped_data(), dkernel->untyped_data());
  } catch (const std::exception& e) {  // dnnl::error, or std::bad_alloc growing a buffer: never into XLA
    return ffi::Error::Internal(std::string("oneDNN convolution kernel gradient of an activated input: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvForward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JAXNETS_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvForwardFused, FusedForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>() JAXNETS_CONV_ATTRS.Attr<int64_t>("activation"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvInputGradient, InputGradientImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JAXNETS_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvKernelGradient, KernelGradientImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  JAXNETS_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvKernelGradientOfActivated, KernelGradientOfActivatedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAXNETS_CONV_ATTRS.Attr<int64_t>("activation"));

template <typename T>
nb::capsule Capsule(T* handler) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>, "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(handler));
}

NB_MODULE(_onednn, m) {
  m.def("handlers", [] {
    nb::dict handlers;
    handlers["jaxnets_onednn_conv_forward"] = Capsule(ConvForward);
    handlers["jaxnets_onednn_conv_forward_fused"] = Capsule(ConvForwardFused);
    handlers["jaxnets_onednn_conv_input_gradient"] = Capsule(ConvInputGradient);
    handlers["jaxnets_onednn_conv_kernel_gradient"] = Capsule(ConvKernelGradient);
    handlers["jaxnets_onednn_conv_kernel_gradient_of_activated"] = Capsule(ConvKernelGradientOfActivated);
    return handlers;
  });
  // bfloat16 convolutions need AVX-512 (or AVX2-VNNI-2): true when oneDNN can build one on this CPU.
  m.def("bfloat16_supported", [] {
    try {
      ConvShape s{1, 4, 4, 16, 4, 4, 16, 3, 3, 1, 1, 1, 1, 1, 1, memory::data_type::bf16};
      ForwardDesc(s);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  });
  // The most rows a 1x1 convolution may have to run as matmuls (MatmulMaxRows); returns the previous value.
  m.def("set_matmul_max_rows", [](int64_t rows) { return MatmulMaxRows().exchange(rows); });
  m.def("default_matmul_max_rows", &DefaultMatmulMaxRows);
  // Whether large 1x1 convolutions compute their float32 kernel gradients by ChunkedKernelGradient; returns the
  // previous value.
  m.def("set_chunked_kernel_gradients", [](bool chunked) { return ChunkedKernelGradients().exchange(chunked); });
  m.def("default_chunked_kernel_gradients", [] { return !RunsAvx512(); });
  m.def("version", [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  });
}
