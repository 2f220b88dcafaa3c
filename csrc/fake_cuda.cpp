// A fake CUDA device's guard (NOTE [A fake CUDA device], fake/cuda.py).
//
// On a torch built without CUDA no DeviceGuardImpl is registered for CUDA,
// and autograd asks one for the current stream of every tensor it records
// (InputMetadata): a fake tensor on "cuda" that requires grad ended the
// process with std::terminate. While a tensors="fake" world serves the fake
// device, this guard is registered for CUDA: one default stream a device,
// a current device per thread (CUDA's own rule), events that are always
// complete. The guard it stood in for is put back when the world goes down:
// none on a CPU build; a CUDA build's own on a machine without a GPU (the
// fake device is never served where a GPU is).

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <pybind11/pybind11.h>

namespace fakepg {
namespace {

thread_local c10::DeviceIndex current_index = 0;

struct FakeCudaGuard final : c10::impl::DeviceGuardImplInterface {

  // Every member noexcept: it throws nothing, and a noexcept override fits
  // a base member declared either way (torch has changed some of them).
  c10::DeviceType type() const noexcept override { return c10::DeviceType::CUDA; }
  c10::Device exchangeDevice(c10::Device d) const noexcept override {
    auto old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const noexcept override { return c10::Device(c10::DeviceType::CUDA, current_index); }
  void setDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0) current_index = d.index();
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0) current_index = d.index();
  }
  // Only the interface's required members: their signatures are the ones
  // stable across the torch versions supported; the optional ones (events,
  // stream pools) keep torch's defaults, which nothing reaches here.
  c10::Stream getStream(c10::Device d) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override { return s; }
  // No device the runtime knows: autograd's engine asks each counted device
  // for its primary context as backward starts, which a CUDA build without
  // a GPU refuses. torch.cuda.device_count() is the node's (fake/cuda.py).
  c10::DeviceIndex deviceCount() const noexcept override { return 0; }
};

FakeCudaGuard guard;
const c10::impl::DeviceGuardImplInterface* replaced = nullptr;

}  // namespace

// Registers the guard for a node of `devices`; `serve_fake_cuda(0)` puts
// back the guard it replaced.
bool serve_fake_cuda(int devices) {
  auto& slot = c10::impl::device_guard_impl_registry[static_cast<size_t>(c10::DeviceType::CUDA)];
  if (devices <= 0) {
    if (slot.load() == &guard) slot.store(replaced);
    replaced = nullptr;
    return true;
  }
  const auto* found = slot.load();
  if (found != &guard) replaced = found;
  slot.store(&guard);
  return true;
}

int fake_cuda_device() { return current_index; }

void set_fake_cuda_device(int index) { current_index = static_cast<c10::DeviceIndex>(index); }

}  // namespace fakepg
