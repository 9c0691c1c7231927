// A tensor's storage, data pointer and grad, read from the fields that torch's own TensorImpl and AutogradMeta
// return them from, for the host loops that visit every param of every step (the validator, the flat buffers'
// view check, the step cache's grads, the launch pointers, the step counters).
//
// The public accessors are calls out of line: TensorImpl::has_storage() and storage() are virtual in torch's
// builds (TENSORIMPL_MAYBE_VIRTUAL), data_ptr() calls has_storage() for its check, and Tensor::grad() calls the
// virtual TensorImpl::grad() and then asks the autograd hooks is_leaf(). In the flat view check (4096 params,
// one thread, warm) has_storage() and storage() were 45 % of the check's samples.
//
// Where they would differ: TensorImpl subclasses without storage (sparse, opaque, functorch's batched
// tensors) leave the storage field empty, so storage_of() is null for them as has_storage() is false; the
// callers never reach a wrapper whose storage() throws (functionalization and FakeTensor run their own
// kernels, not these loops).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/variable.h>

namespace adadelta_fused {

// The StorageImpl the tensor views; null when it has no storage.
inline const c10::StorageImpl* storage_of(const c10::TensorImpl* t) {
  return t->unsafe_storage().unsafeGetStorageImpl();
}

// The param's grad, as TensorImpl::grad() returns it: AutogradMeta's grad_ (as in
// torch::autograd::impl::get_autograd_meta, AutogradMeta is the only AutogradMetaInterface torch makes).
// Null when the param has no autograd meta or no grad.
inline const at::Tensor* grad_of(const c10::TensorImpl* param) {
  const auto* meta = static_cast<const torch::autograd::AutogradMeta*>(param->autograd_meta());
  if (meta == nullptr || !meta->grad_.defined()) return nullptr;
  return &meta->grad_;
}

// TensorBase::data_ptr(): the first element, null for an empty tensor; copy-on-write storage materialized
// (StorageImpl::mutable_data), as for any in-place write.
inline void* mutable_data_of(const at::TensorBase& tensor) {
  c10::TensorImpl* t = tensor.unsafeGetTensorImpl();
  const c10::Storage& storage = t->unsafe_storage();
  TORCH_CHECK(storage, "a tensor of the step has no storage; the step needs ordinary strided tensors");
  if (t->numel() == 0) return nullptr;
  return static_cast<char*>(storage.mutable_data()) + t->itemsize() * t->storage_offset();
}

}  // namespace adadelta_fused
