// Every implementation oneDNN offers for one convolution's forward, input gradient or kernel gradient, timed side by
// side: does the oneDNN that jaxnets links have a faster kernel than the one it picks first? (benchmarks/README.md:
// the AVX2 stride-2 input gradient; results/few_channel_input_gradient_*.md: the input gradient into an image's 1-3
// channels.) NHWC float32 activations, padding KERNEL / 2; the kernel in the layout each implementation picks,
// reordered from a plain one once before the clock starts (so that its padding is zeros, as in jaxnets' calls, which
// reorder it each time: the same for every implementation). Denormals are flushed to zero, on the OpenMP threads
// too, as XLA's threads (which start oneDNN's) run jaxnets' calls: without that, oneDNN 3.2's AVX2 input gradient
// into 1-3 channels took 100-180x longer on uninitialised padding lanes read as denormals.
//
//   V=$PWD/.venv; pip install "onednn-devel-cpu-gomp==2023.2.0"   # the headers of the oneDNN jaxnets builds against
//   g++ -O2 -std=c++17 benchmarks/onednn_impls.cc -I$V/include -L$V/lib -ldnnl -Wl,-rpath,$V/lib -o /tmp/impls
//   ONEDNN_MAX_CPU_ISA=AVX2 /tmp/impls 32 32 128 128 3 2 dX   # the defaults: cpu.py's stride-2 dense 3x3
//
// Arguments: BATCH SIZE IN_CHANNELS OUT_CHANNELS KERNEL STRIDE DIRECTION (fwd, dX or dW) [ROUNDS, default 5]. Each
// round calls every implementation 3 times in turn (after 2 untimed calls each). Prints one line: the shape, then
// each implementation in oneDNN's order of preference with its median ms and its speed against the first (> 1:
// faster than what oneDNN picks). oneDNN's reference loops and SSE4.1 kernels are left out (seconds a call).
#include <oneapi/dnnl/dnnl.hpp>
#include <pmmintrin.h>
#include <xmmintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

using dnnl::memory;

namespace {

struct Candidate {
  std::string name;
  dnnl::primitive primitive;
  std::unordered_map<int, memory> args;
  std::vector<char> scratchpad;
  std::vector<double> ms;
};

bool Timed(const std::string& name) {
  return name.rfind("ref", 0) != 0 && name.find("sse41") == std::string::npos;
}

void Fill(const memory& m) {
  auto* data = static_cast<float*>(m.get_data_handle());
  const size_t count = m.get_desc().get_size() / sizeof(float);
  for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
}

// Every implementation of `pd` (a primitive descriptor of kind Primitive), its operands `inputs` filled and
// `output` allocated, each described by the implementation's own layouts.
template <typename Primitive, typename Desc, typename Operands>
std::vector<Candidate> Candidates(const dnnl::engine& engine, Desc pd, Operands operands) {
  std::vector<Candidate> candidates;
  do {
    if (!Timed(pd.impl_info_str())) continue;
    Candidate c{pd.impl_info_str(), Primitive(pd), {}, std::vector<char>(pd.scratchpad_desc().get_size()), {}};
    for (const auto& [arg, desc, filled] : operands(pd)) {
      memory m(desc, engine);
      if (filled && arg == DNNL_ARG_WEIGHTS) {
        memory plain({desc.get_dims(), memory::data_type::f32, memory::format_tag::oihw}, engine);
        Fill(plain);
        dnnl::stream stream(engine);
        dnnl::reorder(plain, m).execute(stream, plain, m);
        stream.wait();
      } else if (filled) {
        Fill(m);
      }
      c.args[arg] = m;
    }
    c.args[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), engine, c.scratchpad.data());
    candidates.push_back(std::move(c));
  } while (pd.next_impl());
  return candidates;
}

struct Operand {
  int arg;
  memory::desc desc;
  bool filled;
};

}  // namespace

int main(int argc, char** argv) {
  // Before oneDNN starts its OpenMP threads, which inherit the setting.
  _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
  _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
  const int batch = argc > 1 ? std::atoi(argv[1]) : 32, size = argc > 2 ? std::atoi(argv[2]) : 32;
  const int in = argc > 3 ? std::atoi(argv[3]) : 128, out = argc > 4 ? std::atoi(argv[4]) : 128;
  const int kernel = argc > 5 ? std::atoi(argv[5]) : 3, stride = argc > 6 ? std::atoi(argv[6]) : 2;
  const std::string direction = argc > 7 ? argv[7] : "dX";
  const int rounds = argc > 8 ? std::atoi(argv[8]) : 5;
  if (direction != "fwd" && direction != "dX" && direction != "dW") {
    std::fprintf(stderr, "DIRECTION must be fwd, dX or dW, not %s\n", direction.c_str());
    return 2;
  }
  const int padding = kernel / 2, out_size = (size + 2 * padding - kernel) / stride + 1;
  const int far_padding = (out_size - 1) * stride + kernel - size - padding;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);

  const memory::desc x({batch, in, size, size}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc y({batch, out, out_size, out_size}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc w({out, in, kernel, kernel}, memory::data_type::f32, memory::format_tag::any);
  const memory::dims strides = {stride, stride}, begin = {padding, padding}, end = {far_padding, far_padding};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // as jaxnets' calls run
  // Also the backward passes' hint, which must outlive their next_impl() calls.
  const dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training,
                                                          dnnl::algorithm::convolution_direct, x, w, y, strides,
                                                          begin, end, attr);
  std::vector<Candidate> candidates;
  if (direction == "fwd") {
    candidates = Candidates<dnnl::convolution_forward>(engine, forward, [](const auto& pd) {
      return std::vector<Operand>{{DNNL_ARG_SRC, pd.src_desc(), true}, {DNNL_ARG_WEIGHTS, pd.weights_desc(), true},
                                  {DNNL_ARG_DST, pd.dst_desc(), false}};
    });
  } else if (direction == "dX") {
    dnnl::convolution_backward_data::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, x, w, y,
                                                       strides, begin, end, forward, attr);
    candidates = Candidates<dnnl::convolution_backward_data>(engine, pd, [](const auto& pd) {
      return std::vector<Operand>{{DNNL_ARG_DIFF_DST, pd.diff_dst_desc(), true},
                                  {DNNL_ARG_WEIGHTS, pd.weights_desc(), true},
                                  {DNNL_ARG_DIFF_SRC, pd.diff_src_desc(), false}};
    });
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, x, w, y,
                                                          strides, begin, end, forward, attr);
    candidates = Candidates<dnnl::convolution_backward_weights>(engine, pd, [](const auto& pd) {
      return std::vector<Operand>{{DNNL_ARG_SRC, pd.src_desc(), true}, {DNNL_ARG_DIFF_DST, pd.diff_dst_desc(), true},
                                  {DNNL_ARG_DIFF_WEIGHTS, pd.diff_weights_desc(), false}};
    });
  }

  for (auto& c : candidates) {
    for (int call = 0; call < 2; ++call) c.primitive.execute(stream, c.args);
  }
  stream.wait();
  for (int round = 0; round < rounds; ++round) {
    for (auto& c : candidates) {
      for (int call = 0; call < 3; ++call) {
        const auto start = std::chrono::steady_clock::now();
        c.primitive.execute(stream, c.args);
        stream.wait();
        c.ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
    }
  }
  std::printf("%d %d %d %d k%d s%d %s:", batch, size, in, out, kernel, stride, direction.c_str());
  double first = 0;
  for (auto& c : candidates) {
    std::sort(c.ms.begin(), c.ms.end());
    const double median = c.ms[c.ms.size() / 2];
    if (first == 0) first = median;
    std::printf("  %s %.3f (%.2fx)", c.name.c_str(), median, first / median);
  }
  std::printf("\n");
}
