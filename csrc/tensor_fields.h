// A tensor's storage, data pointer and grad, read from the fields that torch's own TensorImpl and AutogradMeta
// return them from, for the host loops that visit every param of every step (the validator, the flat buffers'
// view check, the step cache's grads, the launch pointers, the step counters).
//
// The public accessors are calls out of line: TensorImpl::has_storage() and storage() are virtual in torch's
// builds (TENSORIMPL_MAYBE_VIRTUAL), data_ptr() calls has_storage() for its check, and Tensor::grad() makes the
// virtual call AutogradMetaInterface::grad() and then asks the autograd hooks is_leaf(). In the flat view check
// (4096 params of 16 elements, one thread, warm) has_storage() and storage() were 45 % of the check's perf
// samples (bench/results/host-fields-20261204/).
//
// Where they could differ: every TensorImpl of torch's that makes storage() throw (undefined, sparse,
// functorch's batched and grad-tracking wrappers) has no storage, so storage_of() is null where has_storage()
// is false; FakeTensor and FunctionalTensor (which reach the validator through the fake kernel) hold a storage
// that storage() returns without throwing.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/variable.h>

#include <type_traits>

namespace adadelta_fused {

// The StorageImpl the tensor views; null when it has no storage.
inline const c10::StorageImpl* storage_of(const c10::TensorImpl* t) {
  return t->unsafe_storage().unsafeGetStorageImpl();
}

// A tensor's AutogradMeta (null when it has none): as in torch::autograd::impl::get_autograd_meta,
// AutogradMeta is the only AutogradMetaInterface torch makes.
inline const torch::autograd::AutogradMeta* autograd_meta_of(const c10::AutogradMetaInterface* meta) {
  return static_cast<const torch::autograd::AutogradMeta*>(meta);
}

// The grad an AutogradMeta holds, as TensorImpl::grad() returns it (its grad_); null when there is none.
inline const at::Tensor* grad_of(const torch::autograd::AutogradMeta* meta) {
  if (meta == nullptr || !meta->grad_.defined()) return nullptr;
  return &meta->grad_;
}

// The param's grad; null when the param has no autograd meta or no grad.
inline const at::Tensor* grad_of(const c10::TensorImpl* param) {
  return grad_of(autograd_meta_of(param->autograd_meta()));
}

// The address of a tensor's first element, null for an empty tensor, as TensorBase::data_ptr() (written:
// copy-on-write storage is materialized, StorageImpl::mutable_data) or const_data_ptr() (read only) give it;
// with the typed data_ptr<T>()'s check that storage holding elements has memory (a resized-away storage).
template <bool kWritten>
inline auto data_of(const at::TensorBase& tensor) {
  using Pointer = std::conditional_t<kWritten, char*, const char*>;
  c10::TensorImpl* t = tensor.unsafeGetTensorImpl();
  const c10::Storage& storage = t->unsafe_storage();
  TORCH_CHECK(storage, "a tensor of the step has no storage; the step needs ordinary strided tensors");
  if (t->numel() == 0) return Pointer(nullptr);
  Pointer base;
  if constexpr (kWritten) {
    base = static_cast<Pointer>(storage.mutable_data());
  } else {
    base = static_cast<Pointer>(storage.data());
  }
  TORCH_CHECK(base != nullptr, "a tensor of the step has ", t->numel(), " elements but its storage has no memory "
              "(resized to 0 bytes?)");
  return base + t->itemsize() * t->storage_offset();
}

inline void* mutable_data_of(const at::TensorBase& tensor) { return data_of<true>(tensor); }
inline const void* const_data_of(const at::TensorBase& tensor) { return data_of<false>(tensor); }

}  // namespace adadelta_fused
