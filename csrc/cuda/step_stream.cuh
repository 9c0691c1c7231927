// The stream a CUDA step is queued on, shared by the dense and the quantized op.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../op_host.h"

namespace adadelta_fused {

// The current stream of the params' device (the caller holds a device guard). A CPU lr is read on the host
// when the step is queued: a captured graph would replay that one value forever and ignore every scheduler
// update, so a capture refuses it.
inline cudaStream_t step_stream(const OpArgs& op, const c10::Device& device) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  TORCH_CHECK_VALUE(capture == cudaStreamCaptureStatusNone || !op.lr_tensor.has_value() || !op.lr_tensor->is_cpu(),
                    "lr is a CPU tensor, but the step is being captured in a CUDA graph, which would freeze its "
                    "value; keep lr on ", device, " (torch.tensor(lr, device='", device, "'))");
  return stream;
}

}  // namespace adadelta_fused
