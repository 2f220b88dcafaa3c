// Python bindings for the fakepg backend. Kept apart from the backend so the
// heavy pybind/torch-python headers are compiled in one translation unit only.
#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/utils/pybind.h>

#include "fake_backend.hpp"

namespace py = pybind11;

namespace fakepg {
namespace {

py::tuple shapesTuple(const std::vector<int64_t>& flat, uint32_t ntensors) {
  py::tuple out(ntensors);
  size_t pos = 0;
  for (uint32_t i = 0; i < ntensors; ++i) {
    const auto ndim = static_cast<size_t>(flat[pos++]);
    py::tuple shape(ndim);
    for (size_t d = 0; d < ndim; ++d) {
      shape[d] = flat[pos++];
    }
    out[i] = std::move(shape);
  }
  return out;
}

py::object dtypeObject(int8_t code) {
  if (code < 0) {
    return py::none();
  }
  auto* d = torch::getTHPDtype(static_cast<at::ScalarType>(code));
  return py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(d));
}

py::tuple groupTuple(const GroupInfo& g) {
  py::object ranks;
  if (g.ranks.empty()) {
    ranks = py::none();  // the default group: every rank, 0..size-1
  } else {
    ranks = py::cast(g.ranks);
  }
  return py::make_tuple(g.name, g.rank, g.size, ranks);
}

}  // namespace
}  // namespace fakepg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using fakepg::FailAt;
  using fakepg::FakeBackend;
  using fakepg::Values;
  using fakepg::WorldState;

  m.doc() = "pytest-fakepg's fake c10d backend";

  m.def("op_names", []() {
    std::vector<std::string> names;
    for (int i = 0; i < fakepg::kNumOps; ++i) {
      names.emplace_back(fakepg::opName(static_cast<fakepg::Op>(i)));
    }
    return names;
  });

  py::class_<WorldState, c10::intrusive_ptr<WorldState>>(m, "WorldState")
      .def(
          py::init([](const std::string& values, bool record) {
            TORCH_CHECK(
                values == "uniform" || values == "copy",
                fakepg::cat(
                    "values must be 'uniform' or 'copy', got '", values, "'"));
            return c10::make_intrusive<WorldState>(
                values == "uniform" ? Values::uniform : Values::copy, record);
          }),
          py::arg("values"),
          py::arg("record"))
      .def_property(
          "recording", &WorldState::recording, &WorldState::setRecording)
      .def(
          "arm_fault",
          [](WorldState& w, int op, int64_t nth, bool at_wait) {
            return w.armFault(op, nth, at_wait ? FailAt::wait : FailAt::issue);
          },
          py::arg("op"),
          py::arg("nth"),
          py::arg("at_wait"))
      .def("disarm_fault", &WorldState::disarmFault)
      .def("call_count", &WorldState::callCount)
      .def("__len__", &WorldState::size)
      .def(
          "records",
          [](const WorldState& w, size_t start, size_t stop) {
            // Many records in one call: (op, group, reduce_op, dtype, peer,
            // shapes, bytes, failed) each.
            stop = std::min(stop, w.size());
            py::list out(stop > start ? stop - start : 0);
            for (size_t i = start; i < stop; ++i) {
              const auto& r = w.record(i);
              out[i - start] = py::make_tuple(
                  static_cast<int>(r.op),
                  r.group,
                  static_cast<int>(r.reduce_op),
                  fakepg::dtypeObject(r.dtype),
                  r.peer,
                  fakepg::shapesTuple(w.shapesOf(r), r.ntensors),
                  r.bytes,
                  static_cast<bool>(r.failed));
            }
            return out;
          })
      .def(
          "op_codes",
          [](const WorldState& w) {
            std::string codes;
            codes.reserve(w.size());
            for (const auto& r : w.records()) {
              codes.push_back(static_cast<char>(r.op));
            }
            return py::bytes(codes);
          })
      .def("count", &WorldState::count)
      .def("total_bytes", &WorldState::totalBytes)
      .def("clear_log", &WorldState::clearLog)
      .def("group", [](const WorldState& w, int i) {
        return fakepg::groupTuple(w.group(i));
      });

  py::class_<FakeBackend, c10d::Backend, c10::intrusive_ptr<FakeBackend>>(
      m, "FakeBackend")
      .def(
          py::init([](const c10::intrusive_ptr<WorldState>& world,
                      int rank,
                      int size,
                      std::string name,
                      std::vector<int64_t> ranks) {
            return c10::make_intrusive<FakeBackend>(
                world, rank, size, std::move(name), std::move(ranks));
          }),
          py::arg("world"),
          py::arg("rank"),
          py::arg("size"),
          py::arg("group_name"),
          py::arg("global_ranks"));
}
