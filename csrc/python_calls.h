// The eager path's per-step calls from Python (python_calls.cpp), registered on the extension module.
#pragma once

#include <torch/extension.h>

namespace adadelta_fused {

void register_python_calls(pybind11::module_& m);

}  // namespace adadelta_fused
