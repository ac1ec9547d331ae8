/*
 * evx_sqlite's one-status forms: evx_sql_future_status folds a query
 * future's two statuses (did it run; did SQLite succeed) into one, and
 * evx_sqlite_await is query_future + evx_await + that status for coroutines.
 * Built on public calls only (sqlite.h, future.h, coro.h).
 *
 * Ownership: evx_sqlite_await takes the result from the future before
 * releasing it, so the caller owns it (*out) or it is freed here; the future
 * is always released before returning.
 */
#include <evexec/coro.h>
#include <evexec/sqlite.h>

int evx_sql_future_status(const evx_future *f) {
  int st = evx_future_status(f);
  if (st != EVX_OK) return st; /* pending, never ran, or EVX_EINVAL for NULL */
  const evx_sql_result *res = evx_future_result(f);
  return res ? res->status : EVX_EINVAL;
}

int evx_sqlite_await(evx_sqlite *db, evx_sql_mode mode, const char *sql,
                     const evx_sql_value *params, size_t nparams, evx_sql_result **out) {
  if (out) *out = NULL;
  /* Checked before queueing so that nothing runs that nobody waits for. */
  if (!evx_in_coro() || !db || !sql || (nparams && !params) ||
      (mode != EVX_SQL_READ && mode != EVX_SQL_WRITE))
    return EVX_EINVAL;
  evx_future *f = evx_sqlite_query_future(db, mode, sql, params, nparams);
  if (!f) return EVX_ENOMEM; /* the arguments were valid, on the loop thread */
  int st = evx_await(f);
  evx_sql_result *res = NULL;
  if (st == EVX_OK) { /* it ran: the query's own status, and its result */
    st = evx_sql_future_status(f);
    res = evx_future_take(f);
  } /* else it never ran, or we were interrupted (f is cancelled): no result */
  evx_future_release(f);
  if (out)
    *out = res;
  else
    evx_sql_result_free(res);
  return st;
}
