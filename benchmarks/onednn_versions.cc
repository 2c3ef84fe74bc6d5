// Would a newer oneDNN make jaxnets' convolutions faster? One convolution's forward, input gradient and weight
// gradient, timed by this program built twice: against the oneDNN jaxnets links (3.2, `onednn-devel-cpu-gomp`, the
// newest OpenMP build on PyPI) and against the newest on PyPI (`onednn` 2026.1: oneDNN 3.13, a SYCL build whose CPU
// engine runs on Intel's OpenCL CPU runtime and TBB; PyTorch 2.13 bundles 3.12). Run the two builds alternately and
// compare medians (benchmarks/results/onednn_versions_*.md).
//
//   V=$PWD/.venv; pip install "onednn-devel-cpu-gomp==2023.2.0"          # oneDNN 3.2, as for building jaxnets
//   N=/tmp/onednn313; python3 -m venv $N && $N/bin/pip install onednn==2026.1.0 onednn-devel==2026.1.0  # 2 GB
//   g++ -O2 -std=c++17 benchmarks/onednn_versions.cc -I$V/include -L$V/lib -ldnnl -Wl,-rpath,$V/lib -o /tmp/conv32
//   g++ -O2 -std=c++17 benchmarks/onednn_versions.cc -I$N/include -L$N/lib -ldnnl -Wl,-rpath,$N/lib -o /tmp/conv313
//   conv313() { LD_LIBRARY_PATH=$N/lib OCL_ICD_FILENAMES=$N/lib/libintelocl.so /tmp/conv313 "$@"; }
//   for i in 1 2 3; do ONEDNN_MAX_CPU_ISA=AVX2 /tmp/conv32 32 32 128 128 3 1 1; ONEDNN_MAX_CPU_ISA=AVX2 conv313 32 32 128 128 3 1 1; done
//
// 3.13's libraries (SYCL, TBB, OpenCL) are found through LD_LIBRARY_PATH, and the wheel's OpenCL .icd names no real
// path, hence OCL_ICD_FILENAMES; set them for conv313 only: exported, they make conv32 load 3.13 too (each run prints
// the version it loaded).
//
// PyTorch's own oneDNN (3.12, OpenMP, results/onednn_versions_omp_*.md) is built from its source: the tag v3.12 of
// github.com/uxlfoundation/oneDNN (the commit `torch.__config__.show()` names; not on PyPI or this project's
// registries), about 16 minutes on 2 cores with convolutions and reorders only:
//   cmake -S oneDNN -B /tmp/onednn312/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDNNL_CPU_RUNTIME=OMP \
//     -DDNNL_GPU_RUNTIME=NONE -DONEDNN_BUILD_GRAPH=OFF -DDNNL_BUILD_TESTS=OFF -DDNNL_BUILD_EXAMPLES=OFF \
//     -DDNNL_ENABLE_PRIMITIVE="CONVOLUTION;REORDER" -DDNNL_ENABLE_PRIMITIVE_CPU_ISA=AVX512 \
//     -DCMAKE_INSTALL_PREFIX=/tmp/onednn312/install && ninja -C /tmp/onednn312/build install
//   M=/tmp/onednn312/install; g++ -O2 -std=c++17 benchmarks/onednn_versions.cc -I$M/include -L$M/lib -ldnnl \
//     -Wl,-rpath,$M/lib -o /tmp/conv312
//
// Arguments: BATCH SIZE IN_CHANNELS OUT_CHANNELS KERNEL STRIDE GROUPS [CALLS, default 15]; padding KERNEL / 2, NHWC
// float32 activations, weights given as jaxnets gives them (HWIO) and reordered to the layout the primitive picks in
// each timed call, as jaxnets' extension does. Prints the oneDNN version, the median ms of CALLS calls after 2
// warm-up calls of each direction (the forward also without its weight reorder), and the implementations picked.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

using dnnl::memory;

namespace {

template <typename F>
double median_ms(dnnl::stream& stream, int calls, F call) {
  std::vector<double> seconds;
  for (int i = 0; i < calls + 2; ++i) {
    const auto start = std::chrono::steady_clock::now();
    call();
    stream.wait();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  seconds.erase(seconds.begin(), seconds.begin() + 2);  // warm-up: primitive caches, first touches
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2] * 1e3;
}

void fill(const memory& m) {
  auto* data = static_cast<float*>(m.get_data_handle());
  const size_t count = m.get_desc().get_size() / sizeof(float);
  for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s BATCH SIZE IN_CHANNELS OUT_CHANNELS KERNEL STRIDE GROUPS [CALLS]\n", argv[0]);
    return 2;
  }
  const int batch = std::atoi(argv[1]), size = std::atoi(argv[2]), in = std::atoi(argv[3]), out = std::atoi(argv[4]);
  const int kernel = std::atoi(argv[5]), stride = std::atoi(argv[6]), groups = std::atoi(argv[7]);
  const int calls = argc > 8 ? std::atoi(argv[8]) : 15;
  const int padding = kernel / 2, out_size = (size + 2 * padding - kernel) / stride + 1;

  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::dims strides{stride, stride}, pads{padding, padding};
  const memory::dims weights_dims = groups == 1 ? memory::dims{out, in, kernel, kernel}
                                                : memory::dims{groups, out / groups, in / groups, kernel, kernel};
  const memory::desc x({batch, in, size, size}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc y({batch, out, out_size, out_size}, memory::data_type::f32, memory::format_tag::nhwc);
  const memory::desc any_weights(weights_dims, memory::data_type::f32, memory::format_tag::any);
  const memory::desc hwio(weights_dims, memory::data_type::f32,
                          groups == 1 ? memory::format_tag::hwio : memory::format_tag::hwigo);

  const auto algorithm = dnnl::algorithm::convolution_direct;
  const dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training, algorithm, x,
                                                          any_weights, y, strides, pads, pads);
  const dnnl::convolution_backward_data::primitive_desc input_gradient(engine, algorithm, x, any_weights, y, strides,
                                                                       pads, pads, forward);
  const dnnl::convolution_backward_weights::primitive_desc weight_gradient(engine, algorithm, x, any_weights, y,
                                                                           strides, pads, pads, forward);

  memory src(x, engine), dst(y, engine), user_weights(hwio, engine), weight_gradient_hwio(hwio, engine);
  memory forward_weights(forward.weights_desc(), engine), backward_weights(input_gradient.weights_desc(), engine);
  memory weight_gradient_blocked(weight_gradient.diff_weights_desc(), engine);
  fill(src);
  fill(dst);
  fill(user_weights);
  dnnl::convolution_forward forward_call(forward);
  dnnl::convolution_backward_data input_gradient_call(input_gradient);
  dnnl::convolution_backward_weights weight_gradient_call(weight_gradient);
  dnnl::reorder to_forward(user_weights, forward_weights), to_backward(user_weights, backward_weights);
  dnnl::reorder to_hwio(weight_gradient_blocked, weight_gradient_hwio);

  auto run_forward = [&] {
    forward_call.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, forward_weights}, {DNNL_ARG_DST, dst}});
  };
  const double forward_ms = median_ms(stream, calls, [&] {
    to_forward.execute(stream, user_weights, forward_weights);
    run_forward();
  });
  const double forward_kernel_ms = median_ms(stream, calls, run_forward);
  const double input_gradient_ms = median_ms(stream, calls, [&] {
    to_backward.execute(stream, user_weights, backward_weights);
    input_gradient_call.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, backward_weights},
                                         {DNNL_ARG_DIFF_SRC, src}});
  });
  const double weight_gradient_ms = median_ms(stream, calls, [&] {
    weight_gradient_call.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                                          {DNNL_ARG_DIFF_WEIGHTS, weight_gradient_blocked}});
    to_hwio.execute(stream, weight_gradient_blocked, weight_gradient_hwio);
  });

  const dnnl_version_t* version = dnnl_version();
  std::printf("oneDNN %d.%d.%d  fwd %.2f (without the weight reorder %.2f)  dX %.2f  dW %.2f  all %.2f ms  [%s | %s | %s]\n",
              version->major, version->minor, version->patch, forward_ms, forward_kernel_ms, input_gradient_ms,
              weight_gradient_ms, forward_ms + input_gradient_ms + weight_gradient_ms, forward.impl_info_str(),
              input_gradient.impl_info_str(), weight_gradient.impl_info_str());
  return 0;
}
