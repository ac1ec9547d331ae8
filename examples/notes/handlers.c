/*
 * The notes routes. Every handler runs on the loop thread and never blocks:
 * SQL goes to the reader pool or the writer thread (ext/sqlite), the "new
 * note" mail is a durable task committed with the note (mailtask.c), and
 * long polls park on an evx_condition.
 *
 *   POST /notes                {"title": "...", "body": "..."} -> 201 + the note;
 *                              (the note and its mail task in one transaction);
 *                              after the commit: wake long polls
 *   GET  /notes[?since=ID&limit=N]  notes with id > since, oldest first
 *   GET  /notes/{id}           one note, 404 when missing
 *   GET  /notes/wait?since=ID[&timeout=MS]  notes newer than ID as soon as
 *                              one exists; 204 after the timeout
 *   GET  /metrics              Prometheus text (evx_http_route_metrics + metrics.c)
 *
 * Every route is a coroutine handler (evx_http_route_coro): it reads top to
 * bottom - validate, await the query (evx_sqlite_await: one status) or the
 * condition, answer - and a client that leaves makes the await return
 * EVX_EGONE: a read not started is cancelled, a running one interrupted,
 * and there is nothing to answer. A write is never cancelled: POST awaits a
 * future that is not linked to the transaction (notes_store), so the note
 * and its mail are stored even if nobody reads the reply.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notes.h"

#define TITLE_MAX 200
#define BODY_MAX 65536
#define LIST_DEFAULT 100
#define LIST_MAX 1000

const char notes_schema[] =
    "CREATE TABLE IF NOT EXISTS notes ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " title TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));";

static const char SQL_ONE[] = "SELECT id, title, body, created_at FROM notes WHERE id = ?1";
static const char SQL_LIST[] =
    "SELECT id, title, body, created_at FROM notes WHERE id > ?1 ORDER BY id LIMIT ?2";

static const char JSON_TYPE[] = "application/json";

/* ---- replies ----------------------------------------------------------------- */

static int reply_json(evx_request *req, int status, json_t *v) {
  char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
  json_decref(v);
  if (!s) return notes_reply_error(req, 500, "out of memory");
  size_t n = strlen(s);
  /* One JSON document per line: easy to read with curl. */
  char *line = realloc(s, n + 2);
  if (line) {
    s = line;
    s[n++] = '\n';
    s[n] = '\0';
  }
  int rc = evx_request_finish(req, status, JSON_TYPE, s, n);
  free(s);
  return rc;
}

int notes_reply_error(evx_request *req, int status, const char *msg) {
  /* A message may quote the client's bytes (jansson's parse errors do), which
   * need not be UTF-8, and json_pack refuses invalid UTF-8: keep it printable
   * ASCII, or a bad request would be answered 500. */
  char safe[512];
  size_t i = 0;
  for (; msg && msg[i] && i < sizeof safe - 1; i++) {
    unsigned char c = (unsigned char)msg[i];
    safe[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  safe[i] = '\0';
  json_t *v = json_pack("{s:s}", "error", safe);
  char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
  json_decref(v);
  int rc = s ? evx_request_finishf(req, status, JSON_TYPE, "%s\n", s)
             : evx_request_finish(req, 500, NULL, "out of memory\n", 14);
  free(s);
  return rc;
}

/* The answer for a query that could not run: 503 when the pool is full or
 * the database stayed locked, or it is closing; 500 otherwise. */
static int reply_db_error(evx_request *req, int status, const char *msg) {
  if (status == EVX_EBUSY || status == EVX_ELOCKED) return evx_request_reply_busy(req, 1);
  if (status == EVX_ECLOSED || status == EVX_ECANCELED)
    return notes_reply_error(req, 503, "the service is shutting down");
  char buf[512];
  snprintf(buf, sizeof buf, "database error: %s", msg ? msg : evx_strerror(status));
  return notes_reply_error(req, 500, buf);
}

/* Text of a cell as (pointer, length); "" for NULL or numbers. */
static const char *cell_text(const evx_sql_result *r, size_t row, size_t col, size_t *len) {
  const evx_sql_value *v = evx_sql_cell(r, row, col);
  if (!v || (v->type != EVX_SQL_TEXT && v->type != EVX_SQL_BLOB)) {
    *len = 0;
    return "";
  }
  *len = v->v.s.len;
  return v->v.s.p;
}

static json_t *note_json(const evx_sql_result *r, size_t row) {
  size_t tl, bl, cl;
  const char *title = cell_text(r, row, 1, &tl), *body = cell_text(r, row, 2, &bl);
  const char *created = cell_text(r, row, 3, &cl);
  return json_pack("{s:I, s:s%, s:s%, s:s%}", "id", (json_int_t)evx_sql_get_int(r, row, 0),
                   "title", title, tl, "body", body, bl, "created_at", created, cl);
}

static json_t *notes_array(const evx_sql_result *r) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < r->nrows; i++) {
    if (json_array_append_new(a, note_json(r, i)) != 0) {
      json_decref(a);
      return NULL;
    }
  }
  return a;
}

/* ---- parameters ---------------------------------------------------------------- */

/* A decimal integer in [min, max]; 0 on success, -1 for anything else. */
static int parse_int(const char *s, long long min, long long max, long long *out) {
  if (!s || !*s) return -1;
  for (const char *p = s; *p; p++)
    if (*p < '0' || *p > '9') return -1;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < min || v > max) return -1;
  *out = v;
  return 0;
}

static int utf8_chars(const char *s, size_t len) {
  int n = 0;
  for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
  return n;
}

/* ---- POST /notes (a coroutine handler) ----------------------------------------- */

/* The note from the request body, or NULL after answering 400 (or 500). */
static notes_post *read_note(evx_request *req, notes_app *app) {
  size_t len;
  const char *body = evx_request_body(req, &len);
  json_error_t jerr;
  json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!doc) {
    char msg[300];
    snprintf(msg, sizeof msg, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
             jerr.column);
    notes_reply_error(req, 400, msg);
    return NULL;
  }
  json_t *jt = json_object_get(doc, "title"), *jb = json_object_get(doc, "body");
  const char *problem = NULL;
  if (!json_is_object(doc)) problem = "the body must be a JSON object";
  else if (!json_is_string(jt)) problem = "\"title\" must be a string";
  else if (json_string_length(jt) == 0) problem = "\"title\" must not be empty";
  else if (utf8_chars(json_string_value(jt), json_string_length(jt)) > TITLE_MAX)
    problem = "\"title\" is longer than 200 characters";
  else if (jb && !json_is_string(jb)) problem = "\"body\" must be a string";
  else if (jb && json_string_length(jb) > BODY_MAX) problem = "\"body\" is longer than 64 KiB";
  /* (json_loadb without JSON_ALLOW_NUL already refuses \u0000.) */
  notes_post *p = problem ? NULL
                          : notes_post_new(app, json_string_value(jt), json_string_length(jt),
                                           jb ? json_string_value(jb) : "",
                                           jb ? json_string_length(jb) : 0);
  json_decref(doc);
  if (problem) notes_reply_error(req, 400, problem);
  else if (!p) notes_reply_error(req, 500, "out of memory");
  return p;
}

/* Store the note and its mail (one transaction: notes_store), then answer
 * 201 + the note as stored. A full writer queue is 503 at once. The client
 * leaving ends only the wait: the write is never abandoned. */
static void on_post(evx_request *req, void *arg) {
  notes_post *p = read_note(req, arg);
  if (!p) return;
  int st = notes_store(p);
  if (st == EVX_OK) {
    char location[64];
    snprintf(location, sizeof location, "/notes/%lld", (long long)p->id);
    evx_request_set_header(req, "Location", location);
    reply_json(req, 201,
               json_pack("{s:I, s:s%, s:s%, s:s%}", "id", (json_int_t)p->id, "title", p->title,
                         p->title_len, "body", p->body, p->body_len, "created_at",
                         p->created_at, p->created_len));
  } else if (!evx_request_is_gone(req)) {
    reply_db_error(req, st, p->errmsg[0] ? p->errmsg : NULL);
  }
  notes_post_release(p);
}

/* ---- reads: GET /notes, GET /notes/{id} (coroutine handlers) ------------------- */

/* Run a read on the reader pool and wait for it: the result (the caller
 * frees it), or NULL after answering the error. When the client left, the
 * query was cancelled (or interrupted) and there is nothing to answer. */
static evx_sql_result *await_read(notes_app *app, evx_request *req, const char *sql,
                                  const evx_sql_value *p, size_t n) {
  evx_sql_result *r;
  int st = evx_sqlite_await(app->db, EVX_SQL_READ, sql, p, n, &r);
  if (st == EVX_OK) return r;
  if (!evx_request_is_gone(req)) reply_db_error(req, st, r ? r->errmsg : NULL);
  evx_sql_result_free(r);
  return NULL;
}

static int list_params(evx_request *req, long long *since, long long *limit) {
  const char *s = evx_request_query(req, "since"), *l = evx_request_query(req, "limit");
  *since = 0;
  *limit = LIST_DEFAULT;
  if (s && parse_int(s, 0, INT64_MAX, since) != 0) {
    notes_reply_error(req, 400, "since must be a note id (0 or more)");
    return -1;
  }
  if (l && parse_int(l, 1, LIST_MAX, limit) != 0) {
    notes_reply_error(req, 400, "limit must be 1..1000");
    return -1;
  }
  return 0;
}

static void on_list(evx_request *req, void *arg) {
  long long since, limit;
  if (list_params(req, &since, &limit) != 0) return;
  evx_sql_value p[2] = {evx_sql_int(since), evx_sql_int(limit)};
  evx_sql_result *r = await_read(arg, req, SQL_LIST, p, 2);
  if (!r) return;
  reply_json(req, 200, notes_array(r));
  evx_sql_result_free(r);
}

static void on_get_one(evx_request *req, void *arg) {
  long long id; /* the route is /notes/{id} */
  if (parse_int(evx_request_param(req, "id"), 1, INT64_MAX, &id) != 0) {
    notes_reply_error(req, 404, "no such note: ids are positive integers");
    return;
  }
  evx_sql_value p = evx_sql_int(id);
  evx_sql_result *r = await_read(arg, req, SQL_ONE, &p, 1);
  if (!r) return;
  if (r->nrows == 0) {
    char msg[64];
    snprintf(msg, sizeof msg, "note %lld not found", (long long)id);
    notes_reply_error(req, 404, msg);
  } else {
    reply_json(req, 200, note_json(r, 0));
  }
  evx_sql_result_free(r);
}

/* ---- GET /notes/wait (a coroutine handler) ---------------------------------------- */

static void on_wait(evx_request *req, void *arg) {
  notes_app *app = arg;
  const char *s = evx_request_query(req, "since"), *t = evx_request_query(req, "timeout");
  long long since = app->latest_id, timeout = app->cfg.poll_timeout_ms;
  if (s && parse_int(s, 0, INT64_MAX, &since) != 0) {
    notes_reply_error(req, 400, "since must be a note id (0 or more)");
    return;
  }
  if (t && parse_int(t, 1, app->cfg.poll_timeout_ms, &timeout) != 0) {
    char msg[80];
    snprintf(msg, sizeof msg, "timeout must be 1..%ld ms", app->cfg.poll_timeout_ms);
    notes_reply_error(req, 400, msg);
    return;
  }
  if (app->stopping) {
    notes_reply_error(req, 503, "the service is shutting down");
    return;
  }
  uint64_t deadline_ns = notes_now_ns() + (uint64_t)timeout * 1000000ULL;
  /* Wait until a note newer than `since` exists; a wake-up for a note we
   * already had waits on until the deadline. */
  while (app->latest_id <= since) {
    uint64_t now = notes_now_ns();
    if (now >= deadline_ns) {
      evx_request_finish(req, 204, NULL, NULL, 0);
      return;
    }
    evx_future *w = app->new_note
                        ? evx_condition_wait(app->new_note, (deadline_ns - now + 999999) / 1000000)
                        : NULL;
    if (!w) {
      notes_reply_error(req, 503, "cannot wait");
      return;
    }
    int st = evx_await(w);
    evx_future_release(w);
    if (st == EVX_ETIMEDOUT) {
      evx_request_finish(req, 204, NULL, NULL, 0);
      return;
    }
    if (st == EVX_EGONE) return; /* the client left: nothing to answer */
    if (st != EVX_OK) {          /* the condition was freed: the service is stopping */
      notes_reply_error(req, 503, "the service is shutting down");
      return;
    }
  }
  evx_sql_value p[2] = {evx_sql_int(since), evx_sql_int(LIST_MAX)};
  evx_sql_result *r = await_read(app, req, SQL_LIST, p, 2);
  if (!r) return;
  reply_json(req, 200, notes_array(r));
  evx_sql_result_free(r);
}

/* ---- routes ----------------------------------------------------------------------------- */

int notes_routes(notes_app *app) {
  evx_http *h = app->http;
  if (evx_http_route_coro(h, "POST", "/notes", 0, on_post, app) ||
      evx_http_route_coro(h, "GET", "/notes", 0, on_list, app) ||
      evx_http_route_coro(h, "GET", "/notes/wait", 0, on_wait, app) ||
      evx_http_route_coro(h, "GET", "/notes/{id}", 0, on_get_one, app) ||
      evx_http_route_metrics(h, "/metrics"))
    return -1;
  /* A long poll may wait --poll-timeout; every other request keeps the server's timeout. */
  uint64_t poll_ms = (uint64_t)app->cfg.poll_timeout_ms + 5000;
  if (evx_route_set_timeout(evx_http_route_find(h, "GET", "/notes/wait", 0), poll_ms) != EVX_OK)
    return -1;
  return notes_metrics_init(app);
}
