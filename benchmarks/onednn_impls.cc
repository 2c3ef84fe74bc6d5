// Every implementation oneDNN offers for one convolution's input gradient, each timed on its own: does the
// oneDNN that jaxnets links have a faster kernel than the one it picks? (benchmarks/README.md: the AVX2 stride-2
// input gradient.) The shape is cpu.py's "dense 3x3" op: batch 32, 32x32, 128 -> 128 channels, NHWC, padding 1.
//
//   V=$PWD/.venv; pip install "onednn-devel-cpu-gomp==2023.2.0"   # the headers of the oneDNN jaxnets builds against
//   g++ -O2 -std=c++17 benchmarks/onednn_impls.cc -I$V/include -L$V/lib -ldnnl -Wl,-rpath,$V/lib -o /tmp/impls
//   ONEDNN_MAX_CPU_ISA=AVX2 /tmp/impls 2    # STRIDE (default 2)
//
// Prints each implementation's name and the median and minimum of 22 calls after 3 warm-up calls, in ms (oneDNN's
// reference loops named, not timed).
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using dnnl::memory;

int main(int argc, char** argv) {
  const int stride = argc > 1 ? std::atoi(argv[1]) : 2;
  const int batch = 32, size = 32, channels = 128, kernel = 3, padding = 1;
  const int out = (size + 2 * padding - kernel) / stride + 1;
  const int far_padding = (out - 1) * stride + kernel - size - padding;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);

  const memory::desc x({batch, channels, size, size}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc y({batch, channels, out, out}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc w({channels, channels, kernel, kernel}, memory::data_type::f32, memory::format_tag::any);
  const memory::dims strides = {stride, stride}, begin = {padding, padding}, end = {far_padding, far_padding};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // as jaxnets' calls run
  const dnnl::convolution_forward::primitive_desc hint(engine, dnnl::prop_kind::forward_training,
                                                       dnnl::algorithm::convolution_direct, x, w, y, strides,
                                                       begin, end);
  dnnl::convolution_backward_data::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, x, w, y, strides,
                                                     begin, end, hint, attr);

  std::vector<float> dy(static_cast<size_t>(batch) * out * out * channels, 0.5f);
  std::vector<float> dx(static_cast<size_t>(batch) * size * size * channels);
  do {
    if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) {  // oneDNN's reference loops: seconds a call
      std::printf("%-28s not timed (reference loops)\n", pd.impl_info_str());
      continue;
    }
    std::vector<char> scratchpad(pd.scratchpad_desc().get_size());
    memory weights(pd.weights_desc(), engine), dy_memory(y, engine, dy.data()), dx_memory(x, engine, dx.data());
    memory scratchpad_memory(pd.scratchpad_desc(), engine, scratchpad.data());
    dnnl::convolution_backward_data conv(pd);
    std::vector<double> ms;
    for (int call = 0; call < 25; ++call) {
      const auto start = std::chrono::steady_clock::now();
      conv.execute(stream, {{DNNL_ARG_DIFF_DST, dy_memory}, {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_DIFF_SRC, dx_memory}, {DNNL_ARG_SCRATCHPAD, scratchpad_memory}});
      stream.wait();
      if (call >= 3) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("%-28s median %.2f ms, min %.2f ms\n", pd.impl_info_str(), ms[ms.size() / 2], ms.front());
  } while (pd.next_impl());
}
