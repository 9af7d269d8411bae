// A small RAII layer over the SQLite C API, private to the repository (repository.cpp): an
// owned connection, an owned prepared statement with typed bind/column helpers, a Database
// that caches prepared statements by their SQL text and runs them with bound parameters, a
// Transaction guard, and the mapping of SQLite result codes to Error.
// Not thread-safe: like the Repository that owns them, use from one thread at a time.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "api/result.hpp"

namespace mohge::db {

/// Maps the failed result code `rc` of a call on `db` to an Error whose message starts with
/// `context`: SQLITE_BUSY/LOCKED → kUnavailable ("database is busy"); a UNIQUE or PRIMARY KEY
/// violation → kAlreadyExists with field = the last column of the key; a FOREIGN KEY violation
/// → kNotFound; a CHECK (field = the constraint's name) or NOT NULL violation →
/// kInvalidArgument; a write on a read-only connection → kFailedPrecondition; a corrupt or
/// non-database file → kDataLoss; anything else → kInternal
/// with sqlite3_errmsg. Call it before the statement is reset (reset clears the message).
Error sqlite_error(sqlite3* db, int rc, const std::string& context);

/// Owns a sqlite3 connection; closes it on destruction (sqlite3_close_v2, so statements that
/// outlive it are still finalized safely).
class Connection {
 public:
  Connection() = default;
  explicit Connection(sqlite3* db) : db_(db) {}
  ~Connection() { sqlite3_close_v2(db_); }
  Connection(Connection&& o) noexcept : db_(std::exchange(o.db_, nullptr)) {}
  Connection& operator=(Connection&& o) noexcept {
    std::swap(db_, o.db_);
    return *this;
  }
  sqlite3* get() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

/// Owns one prepared statement. Parameters are 1-based, columns 0-based (as in SQLite). Text
/// binds copy the bytes (SQLITE_TRANSIENT) except bind_static, whose text must stay alive
/// and unchanged until the statement is reset or rebound.
class Statement {
 public:
  Statement() = default;
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(Statement&& o) noexcept : stmt_(std::exchange(o.stmt_, nullptr)) {}
  Statement& operator=(Statement&& o) noexcept {
    std::swap(stmt_, o.stmt_);
    return *this;
  }

  /// Compiles the single SQL statement `sql`. `persistent` tells SQLite it will be reused
  /// many times. Errors are mapped by sqlite_error with `context`.
  static Result<Statement> prepare(sqlite3* db, std::string_view sql, bool persistent,
                                   const std::string& context);

  void bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void bind(int i, int v) { sqlite3_bind_int64(stmt_, i, v); }
  void bind(int i, double v) { sqlite3_bind_double(stmt_, i, v); }  // NaN binds as NULL
  void bind(int i, std::nullptr_t) { sqlite3_bind_null(stmt_, i); }
  void bind(int i, const char* v) { bind(i, std::string_view(v)); }
  void bind(int i, const std::string& v) { bind(i, std::string_view(v)); }
  void bind(int i, std::string_view v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  template <class T>
  void bind(int i, const std::optional<T>& v) {
    if (v) {
      bind(i, *v);
    } else {
      bind(i, nullptr);
    }
  }
  void bind_static(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }

  /// SQLITE_ROW, SQLITE_DONE, or an error code.
  int step() { return sqlite3_step(stmt_); }
  /// Makes the statement ready to run again (ends its read of the database), keeping the
  /// bound parameters.
  void rewind() { sqlite3_reset(stmt_); }
  /// Makes the statement ready to run again (ends its read of the database) and unbinds.
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  bool column_null(int c) const { return sqlite3_column_type(stmt_, c) == SQLITE_NULL; }
  int64_t column_int64(int c) const { return sqlite3_column_int64(stmt_, c); }
  int column_int(int c) const { return static_cast<int>(sqlite3_column_int64(stmt_, c)); }
  /// NULL reads as NaN (SQLite stores a bound NaN as NULL).
  double column_double(int c) const {
    return column_null(c) ? std::numeric_limits<double>::quiet_NaN()
                          : sqlite3_column_double(stmt_, c);
  }
  /// NULL reads as "".
  std::string column_text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, c));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, c))) : std::string();
  }

 private:
  explicit Statement(sqlite3_stmt* stmt) : stmt_(stmt) {}
  sqlite3_stmt* stmt_ = nullptr;
};

/// A cached statement checked out for one use: resets it when it goes out of scope, so no
/// half-read statement keeps an old read snapshot (or a lock) open between calls.
class StatementUse {
 public:
  explicit StatementUse(Statement* stmt) : stmt_(stmt) {}
  ~StatementUse() {
    if (stmt_) stmt_->reset();
  }
  StatementUse(StatementUse&& o) noexcept : stmt_(std::exchange(o.stmt_, nullptr)) {}
  StatementUse& operator=(StatementUse&&) = delete;
  Statement& operator*() const { return *stmt_; }
  Statement* operator->() const { return stmt_; }

 private:
  Statement* stmt_;
};

/// The row type a reader F makes: T for a reader returning T or Result<T>.
template <class T>
struct RowUnwrap {
  using type = T;
  static constexpr bool kIsResult = false;
};
template <class T>
struct RowUnwrap<Result<T>> {
  using type = T;
  static constexpr bool kIsResult = true;
};
template <class F>
using RowOf = typename RowUnwrap<std::invoke_result_t<F&, const Statement&>>::type;

/// One connection and its statement cache. Every statement is compiled once (on first use)
/// and kept until the Database is destroyed; parameters are always bound, never spliced.
/// Errors name `file` and the operation (`what`).
class Database {
 public:
  Database() = default;
  Database(Connection conn, std::string file) : conn_(std::move(conn)), file_(std::move(file)) {}
  Database(Database&&) noexcept = default;
  Database& operator=(Database&&) noexcept = default;

  sqlite3* get() const { return conn_.get(); }
  const std::string& file() const { return file_; }
  int64_t last_insert_id() const { return sqlite3_last_insert_rowid(conn_.get()); }
  Error error(int rc, const std::string& what) const {
    return sqlite_error(conn_.get(), rc, file_ + ": " + what);
  }

  /// The cached statement for `sql` (compiled on first use), reset when the use ends.
  Result<StatementUse> use(const std::string& sql, const std::string& what);

  /// Runs a statement with `args` bound to ?1, ?2, …; the number of rows it changed.
  template <class... Args>
  Result<int64_t> exec(const std::string& what, const std::string& sql, const Args&... args) {
    Result<StatementUse> st = use(sql, what);
    if (!st.ok()) return st.error();
    Statement& s = *st.value();
    int i = 0;
    (s.bind(++i, args), ...);
    for (int rc = s.step(); rc != SQLITE_DONE; rc = s.step()) {
      if (rc != SQLITE_ROW) return error(rc, what);
    }
    return static_cast<int64_t>(sqlite3_changes64(conn_.get()));
  }

  /// Runs a query with `args` bound and calls `on_row(const Statement&)` per row; on_row
  /// returns void or a Status (an error stops the query and is returned).
  template <class F, class... Args>
  Status query(const std::string& what, const std::string& sql, F&& on_row, const Args&... args) {
    Result<StatementUse> st = use(sql, what);
    if (!st.ok()) return st.error();
    Statement& s = *st.value();
    int i = 0;
    (s.bind(++i, args), ...);
    for (;;) {
      const int rc = s.step();
      if (rc == SQLITE_DONE) return {};
      if (rc != SQLITE_ROW) return error(rc, what);
      if constexpr (std::is_void_v<std::invoke_result_t<F&, const Statement&>>) {
        on_row(static_cast<const Statement&>(s));
      } else {
        Status row = on_row(static_cast<const Statement&>(s));
        if (!row.ok()) return row;
      }
    }
  }

  /// Every row of a query, each made by `read(const Statement&)`, which returns a T or a
  /// Result<T> (an error stops the query and is returned).
  template <class F, class... Args>
  Result<std::vector<RowOf<F>>> rows(const std::string& what, const std::string& sql, F&& read,
                                     const Args&... args) {
    using R = std::invoke_result_t<F&, const Statement&>;
    std::vector<RowOf<F>> out;
    Status st = query(
        what, sql,
        [&](const Statement& s) -> Status {
          if constexpr (RowUnwrap<R>::kIsResult) {
            R r = read(s);
            if (!r.ok()) return r.error();
            out.push_back(std::move(r).value());
          } else {
            out.push_back(read(s));
          }
          return {};
        },
        args...);
    if (!st.ok()) return st.error();
    return out;
  }

  /// The first row of a query (made as by rows()), or nullopt when there is none.
  template <class F, class... Args>
  Result<std::optional<RowOf<F>>> row(const std::string& what, const std::string& sql, F&& read,
                                      const Args&... args) {
    Result<std::vector<RowOf<F>>> all = rows(what, sql, read, args...);
    if (!all.ok()) return all.error();
    if (all.value().empty()) return std::optional<RowOf<F>>();
    return std::optional<RowOf<F>>(std::move(all.value().front()));
  }

 private:
  Connection conn_;
  std::string file_;
  // Declared after conn_, so the statements are finalized before the connection closes.
  std::unordered_map<std::string, Statement> cache_;  // SQL text → compiled statement
};

/// A transaction that rolls back on destruction unless committed. A write transaction takes
/// the write lock up front (BEGIN IMMEDIATE), so a busy database fails in begin() after the
/// busy timeout instead of deadlocking on a read→write upgrade; a read transaction (BEGIN)
/// gives several queries one consistent snapshot.
class Transaction {
 public:
  explicit Transaction(Database& db) : db_(db) {}
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  Status begin(bool write);
  Status commit();

 private:
  Database& db_;
  bool open_ = false;
};

}  // namespace mohge::db
