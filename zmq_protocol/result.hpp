// SPDX-License-Identifier: BSD-3-Clause
#pragma once
#include <system_error>
#include <utility>
#include <variant>

namespace kernelgate {

/// A value or an error code: what parse and verify functions return.
/// (std::expected needs C++23; Boost 1.74 has no boost::system::result.)
template <class T>
class result
{
public:
    result(T value) : v_(std::move(value)) {}            // NOLINT(google-explicit-constructor)
    result(std::error_code ec) : v_(ec) {}               // NOLINT(google-explicit-constructor)
    template <class E, class = std::enable_if_t<std::is_error_code_enum_v<E>>>
    result(E e) : v_(make_error_code(e)) {}              // NOLINT(google-explicit-constructor)

    bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }
    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &std::get<0>(v_); }
    const T* operator->() const { return &std::get<0>(v_); }
    T& operator*() & { return value(); }
    std::error_code error() const noexcept
    {
        return has_value() ? std::error_code{} : std::get<1>(v_);
    }

private:
    std::variant<T, std::error_code> v_;
};

} // namespace kernelgate
