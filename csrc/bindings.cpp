// Python bindings for the fakepg backend. Kept apart from the backend so the
// heavy pybind/torch-python headers are compiled in one translation unit only.
#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <type_traits>

#include "backend.hpp"
#include "exact.hpp"
#include "platform.hpp"
#include "text.hpp"
#include "values.hpp"

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
    ranks = py::none();  // every rank, 0..size-1
  } else {
    ranks = py::cast(g.ranks);
  }
  return py::make_tuple(g.name, g.rank, g.size, ranks, g.global_rank);
}

// A Python callable kept by C++, which may let go of it where c10d has
// released the GIL: the GIL is taken to delete it.
std::shared_ptr<py::object> held(py::object fn) {
  return std::shared_ptr<py::object>(
      new py::object(std::move(fn)), [](py::object* p) {
        py::gil_scoped_acquire gil;
        delete p;
      });
}

// The callable the backend calls per collective for its call site; it takes
// the GIL to call.
std::function<int32_t()> siteSource(py::object fn) {
  if (fn.is_none()) {
    return nullptr;
  }
  return [held = held(std::move(fn))]() -> int32_t {
    py::gil_scoped_acquire gil;
    try {
      return (*held)().cast<int32_t>();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pytest-fakepg's call-site source");
      return kNoSite;
    }
  };
}

// The callable that names a group in messages; it takes the GIL to call.
std::function<std::string(const std::string&)> labelSource(py::object fn) {
  if (fn.is_none()) {
    return nullptr;
  }
  return [held = held(std::move(fn))](const std::string& name) -> std::string {
    py::gil_scoped_acquire gil;
    try {
      return (*held)(name).cast<std::string>();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pytest-fakepg's group labels");
      return std::string();
    }
  };
}

// One member's part of a mismatch, as records.mismatch_data reads it:
// (global rank, group rank, op, shapes, dtype, reduce op, peer, any source,
// input splits, output splits). A part's tensors are its inputs, a recv's
// its buffer.
py::tuple partTuple(const Contribution& c, const std::vector<int64_t>& ranks) {
  const auto& ts = c.in.empty() ? c.out : c.in;
  py::tuple shapes(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    shapes[i] = py::tuple(py::cast(ts[i].sizes().vec()));
  }
  const auto splits = [&](bool input) {
    std::vector<int64_t> rows;
    for (int j = 0; c.op == Op::all_to_all_single && j < c.size; ++j) {
      rows.push_back(c.splitRows(input, j));
    }
    return rows;
  };
  const auto global = [&](int64_t r) -> int64_t {
    return r < 0 || ranks.empty() ? r : ranks.at(r);
  };
  return py::make_tuple(
      c.global_rank,
      c.rank,
      static_cast<int>(c.op),
      shapes,
      dtypeObject(ts.empty() ? -1 : static_cast<int8_t>(ts[0].scalar_type())),
      c.reduces ? static_cast<int>(c.reduce.op_) : kNoReduceOp,
      global(c.root),
      (c.op == Op::recv && c.root < 0),
      splits(true),
      splits(false));
}

// The callable that words a mismatch an exact world's exchange found (NOTE
// [Mismatches are worded in Python], exact.hpp); it takes the GIL to call.
std::function<std::string(const Mismatch&)> mismatchSource(py::object fn) {
  if (fn.is_none()) {
    return nullptr;
  }
  return [held = held(std::move(fn))](const Mismatch& m) -> std::string {
    py::gil_scoped_acquire gil;
    try {
      py::object ranks = py::none();
      if (!m.ranks->empty()) {
        ranks = py::cast(*m.ranks);
      }
      return (*held)(py::make_tuple(
                         static_cast<int>(m.kind),
                         m.group,
                         ranks,
                         m.seq,
                         partTuple(*m.a, *m.ranks),
                         partTuple(*m.b, *m.ranks)))
          .cast<std::string>();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pytest-fakepg's mismatch wording");
      return std::string();
    }
  };
}

// The exact world's switch hook: NOTE [The baton]. Errors it raises go
// where the rank's program would see them, so it must not raise.
std::function<void(int, int)> switchHook(py::object fn) {
  if (fn.is_none()) {
    return nullptr;
  }
  return [held = held(std::move(fn))](int from, int to) {
    py::gil_scoped_acquire gil;
    try {
      (*held)(from, to);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("pytest-fakepg's rank switch");
    }
  };
}

// Runs `fn` without the GIL, for the calls where a rank's thread waits. The
// GIL is taken back on the normal path, not in a destructor (as
// py::gil_scoped_release does): a daemon thread that wakes while Python
// finalizes exits where it takes the GIL back (pthread_exit unwinds its
// stack), and unwinding out of a destructor, which is noexcept, is
// std::terminate: "terminate called without an active exception" at exit.
template <typename F>
auto withoutGil(F&& fn) {
  PyThreadState* state = PyEval_SaveThread();
  if constexpr (std::is_void_v<decltype(fn())>) {
    fn();
    PyEval_RestoreThread(state);
  } else {
    auto result = fn();
    PyEval_RestoreThread(state);
    return result;
  }
}

}  // namespace
}  // namespace fakepg

namespace fakepg {
bool serve_fake_cuda(int devices);
int fake_cuda_device();
void set_fake_cuda_device(int index);
}  // namespace fakepg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using fakepg::FailAt;
  using fakepg::FakeBackend;
  using fakepg::Values;
  using fakepg::WorldState;

  m.doc() = "pytest-fakepg's fake c10d backend";

  // Facts the records and the scheduler carry, for Python to read rather
  // than copy: a record's flags and its code for "no reduce op", and the
  // states Scheduler reports for a rank (WorldState.rank_states()).
  m.attr("RECORD_FAILED") = fakepg::kFailed;
  m.attr("RECORD_ANY_SOURCE") = fakepg::kAnySource;
  m.attr("RECORD_OBJECT") = fakepg::kObject;
  m.attr("NO_REDUCE_OP") = fakepg::kNoReduceOp;
  m.attr("MISMATCH_KINDS") = py::make_tuple("calls", "point_to_point", "splits");
  m.attr("RANK_NOT_STARTED") = static_cast<int>(fakepg::Scheduler::kNew);
  m.attr("RANK_WAITING") = static_cast<int>(fakepg::Scheduler::kBlocked);
  m.attr("RANK_FINISHED") = static_cast<int>(fakepg::Scheduler::kDone);

  // "linux" or "portable": which platform.hpp the module was built with.
  m.def("platform", []() { return std::string(fakepg::platform::name()); });

  // NOTE [A fake CUDA device] (fake/cuda.py, fake_cuda.cpp).
  m.def("serve_fake_cuda", &fakepg::serve_fake_cuda, py::arg("devices"));
  m.def("fake_cuda_device", &fakepg::fake_cuda_device);
  m.def("set_fake_cuda_device", &fakepg::set_fake_cuda_device, py::arg("index"));

  // NOTE [Per-rank process state] (exact/process_state.py): the check made
  // at each switch, without the interpreter. changed_bindings: the indices i
  // where spaces[i].get(names[i], missing) is not expected[i]. Both lists
  // are the caller's and are not changed meanwhile (the GIL is held).
  m.def(
      "changed_bindings",
      [](const py::list& spaces,
         const py::list& names,
         const py::list& expected,
         const py::object& missing) {
        py::list out;
        const Py_ssize_t n = PyList_GET_SIZE(spaces.ptr());
        for (Py_ssize_t i = 0; i < n; ++i) {
          PyObject* value = PyDict_GetItemWithError(
              PyList_GET_ITEM(spaces.ptr(), i), PyList_GET_ITEM(names.ptr(), i));
          if (value == nullptr) {
            if (PyErr_Occurred()) {
              throw py::error_already_set();
            }
            value = missing.ptr();
          }
          if (value != PyList_GET_ITEM(expected.ptr(), i)) {
            out.append(i);
          }
        }
        return out;
      });
  // The indices i where containers[i] != expected[i] (dict, set and list
  // equality: identity first, then ==); one whose == raises counts as
  // changed, for the caller to look at again.
  m.def(
      "changed_containers",
      [](const py::list& containers, const py::list& expected) {
        py::list out;
        const Py_ssize_t n = PyList_GET_SIZE(containers.ptr());
        for (Py_ssize_t i = 0; i < n; ++i) {
          const int same = PyObject_RichCompareBool(
              PyList_GET_ITEM(containers.ptr(), i),
              PyList_GET_ITEM(expected.ptr(), i),
              Py_EQ);
          if (same < 0) {
            PyErr_Clear();
          }
          if (same != 1) {
            out.append(i);
          }
        }
        return out;
      });

  // (torch dtype, c10 name) of every scalar type torch names in Python:
  // Flight Recorder dumps spell dtypes as c10 does ("Float").
  m.def("scalar_type_names", []() {
    py::list out;
    for (int i = 0; i < static_cast<int>(at::ScalarType::NumOptions); ++i) {
      const auto t = static_cast<at::ScalarType>(i);
      try {
        out.append(py::make_tuple(fakepg::dtypeObject(static_cast<int8_t>(i)), c10::toString(t)));
      } catch (const std::exception&) {
        PyErr_Clear();  // a scalar type with no Python dtype
      }
    }
    return out;
  });

  m.def("op_names", []() {
    std::vector<std::string> names;
    for (int i = 0; i < fakepg::kNumOps; ++i) {
      names.emplace_back(fakepg::opName(static_cast<fakepg::Op>(i)));
    }
    return names;
  });

  py::class_<WorldState, c10::intrusive_ptr<WorldState>>(m, "WorldState")
      .def(
          py::init([](const std::string& values,
                      bool record,
                      int world_size,
                      std::vector<int64_t> running) {
            TORCH_CHECK(
                values == "uniform" || values == "copy" || values == "exact",
                fakepg::cat(
                    "values must be 'uniform', 'copy' or 'exact', got '",
                    values,
                    "'"));
            const auto v = values == "uniform" ? Values::uniform
                : values == "copy"             ? Values::copy
                                               : Values::exact;
            return c10::make_intrusive<WorldState>(
                v, record, world_size, std::move(running));
          }),
          py::arg("values"),
          py::arg("record"),
          py::arg("world_size") = 1,
          py::arg("running") = std::vector<int64_t>{})
      .def_property(
          "recording", &WorldState::recording, &WorldState::setRecording)
      .def(
          "arm_fault",
          [](WorldState& w, int op, int64_t nth, bool at_wait, int rank) {
            return w.armFault(
                op, nth, at_wait ? FailAt::wait : FailAt::issue, rank);
          },
          py::arg("op"),
          py::arg("nth"),
          py::arg("at_wait"),
          py::arg("rank") = -1)
      .def("disarm_fault", &WorldState::disarmFault)
      .def("is_armed", &WorldState::isArmed)
      .def(
          "call_count",
          &WorldState::callCount,
          py::arg("op"),
          py::arg("rank") = -1)
      // Exact worlds: NOTE [The baton]. What may wait runs without the GIL.
      .def("start_run", &WorldState::startRun)
      .def(
          "enter",
          [](WorldState& w, int rank) {
            return fakepg::withoutGil([&] { return w.scheduler()->enter(rank); });
          })
      .def(
          "finish",
          [](WorldState& w) {
            return fakepg::withoutGil([&] { return w.scheduler()->finish(); });
          })
      .def(
          "leave",
          [](WorldState& w, int rank) {
            fakepg::withoutGil([&] { w.scheduler()->leave(rank); });
          })
      .def(
          "ended",
          [](WorldState& w, int rank) { w.scheduler()->ended(rank); })
      .def(
          "abort",
          [](WorldState& w, const std::string& reason) {
            w.scheduler()->abort(reason);
          })
      // NOTE [Store waits are turns] (store.py): rank `rank` waits,
      // running the other ranks meanwhile, until `store` (a C++ store: the
      // world's HashStore) has every key; `what` is what a deadlock report
      // says it waits for. False: the wait timed out (NOTE [A store wait
      // times out], exact.cpp).
      .def(
          "wait_for_keys",
          [](WorldState& w,
             int rank,
             const py::object& store,
             std::vector<std::string> keys,
             std::string call,
             int32_t site) {
            auto inner = c10::intrusive_ptr<::c10d::Store>::reclaim_copy(
                py::cast<::c10d::Store*>(store));
            std::exception_ptr stopped;  // raised with the GIL back
            bool found = false;
            fakepg::withoutGil([&] {
              try {
                found = w.scheduler()->blockUntil(
                    rank,
                    [inner, keys = std::move(keys)] {
                      return inner->check(keys);
                    },
                    fakepg::Waiting{std::move(call), "", site});
              } catch (...) {
                stopped = std::current_exception();
              }
            });
            if (stopped) {
              std::rethrow_exception(stopped);
            }
            return found;
          })
      .def(
          "restore_caller_rng",
          [](WorldState& w) { w.scheduler()->restoreCallerRng(); })
      .def(
          "deadlocked",
          [](WorldState& w) { return w.scheduler()->deadlocked(); })
      .def(
          "rank_states",
          [](WorldState& w) { return w.scheduler()->states(); })
      .def(
          "waiting",
          [](WorldState& w) {
            // (op, group, site) per rank, or None where it waits for nothing
            py::list out;
            for (const auto& s : w.scheduler()->waiting()) {
              if (s.op.empty()) {
                out.append(py::none());
              } else {
                out.append(py::make_tuple(s.op, s.group, s.site));
              }
            }
            return out;
          })
      .def(
          "set_switch_hook",
          [](WorldState& w, py::object fn) {
            w.scheduler()->setSwitchHook(fakepg::switchHook(std::move(fn)));
          })
      .def(
          "set_site_source",
          [](WorldState& w, py::object fn) {
            w.setSiteSource(fakepg::siteSource(std::move(fn)));
          })
      .def(
          "set_label_source",
          [](WorldState& w, py::object fn) {
            w.setLabelSource(fakepg::labelSource(std::move(fn)));
          })
      .def(
          "set_mismatch_source",
          [](WorldState& w, py::object fn) {
            w.setMismatchSource(fakepg::mismatchSource(std::move(fn)));
          })
      .def("set_in_object_collective", &WorldState::setInObjectCollective)
      .def("__len__", &WorldState::size)
      .def(
          "size_of",
          [](const WorldState& w, int rank) {
            return rank < 0 ? w.size() : w.indicesOf(rank).size();
          })
      .def(
          "records",
          [](const WorldState& w, size_t start, size_t stop, int rank) {
            // Many records in one call: (op, group, reduce_op, dtype, peer,
            // shapes, bytes, flags, site) each; of `rank`'s records only,
            // counted among them, when rank >= 0.
            std::vector<size_t> picked;
            if (rank >= 0) {
              picked = w.indicesOf(rank);
            }
            const size_t n = rank >= 0 ? picked.size() : w.size();
            stop = std::min(stop, n);
            py::list out(stop > start ? stop - start : 0);
            for (size_t j = start; j < stop; ++j) {
              const size_t i = rank >= 0 ? picked[j] : j;
              const auto& r = w.record(i);
              out[j - start] = py::make_tuple(
                  static_cast<int>(r.op),
                  r.group,
                  static_cast<int>(r.reduce_op),
                  fakepg::dtypeObject(r.dtype),
                  r.peer,
                  fakepg::shapesTuple(w.shapesOf(r), r.ntensors),
                  r.bytes,
                  static_cast<int>(r.flags),
                  w.site(i));
            }
            return out;
          },
          py::arg("start"),
          py::arg("stop"),
          py::arg("rank") = -1)
      .def(
          "op_codes",
          [](const WorldState& w, int rank) {
            std::string codes;
            codes.reserve(w.size());
            for (const auto& r : w.records()) {
              if (w.issuedBy(r, rank)) {
                codes.push_back(static_cast<char>(r.op));
              }
            }
            return py::bytes(codes);
          },
          py::arg("rank") = -1)
      .def(
          "stats",
          [](const WorldState& w, int rank) {
            // Per (group, op) in first-seen order: [group, op, calls, bytes,
            // failed calls].
            std::map<std::pair<int, int>, size_t> index;
            py::list out;
            std::vector<std::array<int64_t, 5>> rows;
            for (const auto& r : w.records()) {
              if (!w.issuedBy(r, rank)) {
                continue;
              }
              const auto key = std::make_pair(r.group, static_cast<int>(r.op));
              auto it = index.find(key);
              if (it == index.end()) {
                it = index.emplace(key, rows.size()).first;
                rows.push_back({key.first, key.second, 0, 0, 0});
              }
              auto& row = rows[it->second];
              row[2] += 1;
              row[3] += r.bytes;
              row[4] += (r.flags & fakepg::kFailed) ? 1 : 0;
            }
            for (const auto& row : rows) {
              out.append(py::make_tuple(row[0], row[1], row[2], row[3], row[4]));
            }
            return out;
          },
          py::arg("rank") = -1)
      .def("count", &WorldState::count, py::arg("op"), py::arg("rank") = -1)
      .def(
          "total_bytes",
          &WorldState::totalBytes,
          py::arg("op"),
          py::arg("rank") = -1)
      .def("clear_log", &WorldState::clearLog, py::arg("rank") = -1)
      .def("num_groups", &WorldState::numGroups)
      .def("group", [](const WorldState& w, int i) {
        return fakepg::groupTuple(w.group(i));
      });

  // Registered so that pybind finds the Work a collective returns by its own
  // type at once, instead of failing that lookup before falling back to
  // c10d's Work on every call (about a tenth of a fake all_reduce).
  py::class_<fakepg::FakeWork, c10d::Work, c10::intrusive_ptr<fakepg::FakeWork>>(
      m, "FakeWork");
  py::class_<fakepg::ExactWork, c10d::Work, c10::intrusive_ptr<fakepg::ExactWork>>(
      m, "ExactWork");
  // What a thread that runs ranks of exact worlds sleeps on (exact.hpp).
  py::class_<fakepg::Gate, c10::intrusive_ptr<fakepg::Gate>>(m, "Gate")
      .def(py::init<>())
      .def("wait", [](fakepg::Gate& gate) {
        fakepg::withoutGil([&] { gate.wait(); });
      });

  py::class_<FakeBackend, c10d::Backend, c10::intrusive_ptr<FakeBackend>>(
      m, "FakeBackend")
      .def(
          py::init([](const c10::intrusive_ptr<WorldState>& world,
                      int rank,
                      int size,
                      std::string name,
                      std::vector<int64_t> ranks,
                      std::optional<c10::intrusive_ptr<c10d::Backend>> real) {
            return c10::make_intrusive<FakeBackend>(
                world,
                rank,
                size,
                std::move(name),
                std::move(ranks),
                real.value_or(c10::intrusive_ptr<c10d::Backend>()));
          }),
          py::arg("world"),
          py::arg("rank"),
          py::arg("size"),
          py::arg("group_name"),
          py::arg("global_ranks"),
          py::arg("real") = py::none())
      // The two coalesced ops c10d's Python Backend class does not bind,
      // for collectives issued on meta tensors (pytest_fakepg/fake/).
      .def(
          "allgather_into_tensor_coalesced",
          [](FakeBackend& self,
             std::vector<at::Tensor> outputs,
             std::vector<at::Tensor> inputs) {
            return self.allgather_into_tensor_coalesced(outputs, inputs);
          },
          py::arg("outputs"),
          py::arg("inputs"),
          py::call_guard<py::gil_scoped_release>())
      .def(
          "reduce_scatter_tensor_coalesced",
          [](FakeBackend& self,
             std::vector<at::Tensor> outputs,
             std::vector<at::Tensor> inputs,
             const c10d::ReduceOp& op) {
            c10d::ReduceScatterOptions opts;
            opts.reduceOp = op;
            return self.reduce_scatter_tensor_coalesced(outputs, inputs, opts);
          },
          py::arg("outputs"),
          py::arg("inputs"),
          py::arg("op"),
          py::call_guard<py::gil_scoped_release>());
}
