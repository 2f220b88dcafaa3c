// Building messages without iostreams. See NOTE [No iostreams].
#pragma once

#include <c10/util/ArrayRef.h>

#include <string>
#include <type_traits>

namespace fakepg {

// NOTE [No iostreams]
// Messages are built by concatenation, never with c10::str or TORCH_CHECK's
// variadic form: those instantiate std::ostream code inside this library, and
// where the compiler that builds it is not the one whose libstdc++ is loaded
// at run time (seen on a CUDA image whose CXX is a newer GCC than the system's)
// that code crashes. TORCH_CHECK(cond, std::string) formats nothing itself.
inline void append(std::string& s, const char* x) {
  s += x;
}
inline void append(std::string& s, const std::string& x) {
  s += x;
}
inline void append(std::string& s, c10::IntArrayRef xs) {
  s += '[';
  for (size_t i = 0; i < xs.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(xs[i]);
  }
  s += ']';
}
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append(std::string& s, T x) {
  s += std::to_string(x);
}
template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

}  // namespace fakepg
