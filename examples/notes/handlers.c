/*
 * The notes routes. Every handler runs on the loop thread and never blocks:
 * SQL goes to the reader pool or the writer thread (ext/sqlite), the "new
 * note" mail is a durable task committed with the note (mailtask.c), and
 * long polls park on an evx_condition.
 *
 *   POST /notes                {"title": "...", "body": "..."} -> 201 + the note;
 *                              (the note and its mail task in one transaction);
 *                              after finish: wake long polls
 *   GET  /notes[?since=ID&limit=N]  notes with id > since, oldest first
 *   GET  /notes/{id}           one note, 404 when missing
 *   GET  /notes/wait?since=ID[&timeout=MS]  notes newer than ID as soon as
 *                              one exists; 204 after the timeout
 *   GET  /metrics              Prometheus text (evx_http_route_metrics + metrics.c)
 *
 * Ownership: each held request has a small context (notes_post, read_ctx,
 * wait_ctx) freed by the callback that finishes the request. A client that
 * leaves cancels a read or a wait that has not started (evx_request_on_close);
 * a write is never cancelled - the note and its mail are stored even if nobody
 * reads the reply.
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

/* ---- POST /notes --------------------------------------------------------------- */

/* The note is stored and its mail task enqueued in one transaction
 * (mailtask.c), so the mail is as durable as the note. */
static void post_done(void *arg, int status) {
  notes_post *p = arg;
  notes_app *app = p->app;
  evx_request *req = p->req;
  if (status != EVX_OK) {
    reply_db_error(req, status, p->errmsg[0] ? p->errmsg : NULL);
    notes_post_free(p);
    return;
  }
  char location[64];
  snprintf(location, sizeof location, "/notes/%lld", (long long)p->id);
  evx_request_set_header(req, "Location", location);
  /* The response ends here (Tornado's finish); the work below still runs,
   * whether or not the client is still there. */
  reply_json(req, 201,
             json_pack("{s:I, s:s%, s:s%, s:s%}", "id", (json_int_t)p->id, "title", p->title,
                       p->title_len, "body", p->body, p->body_len, "created_at", p->created_at,
                       p->created_len));
  if (p->id > app->latest_id) app->latest_id = p->id;
  if (app->new_note) evx_condition_notify_all(app->new_note);
  notes_post_free(p);
}

static void on_post(evx_request *req, void *arg) {
  notes_app *app = arg;
  size_t len;
  const char *body = evx_request_body(req, &len);
  json_error_t jerr;
  json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!doc) {
    char msg[300];
    snprintf(msg, sizeof msg, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
             jerr.column);
    notes_reply_error(req, 400, msg);
    return;
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
  if (problem) {
    notes_reply_error(req, 400, problem);
    json_decref(doc);
    return;
  }
  notes_post *p = calloc(1, sizeof *p);
  int rc = EVX_ENOMEM;
  if (p) {
    p->app = app;
    p->req = req;
    p->title_len = json_string_length(jt);
    p->body_len = jb ? json_string_length(jb) : 0;
    p->title = malloc(p->title_len + 1);
    p->body = malloc(p->body_len + 1);
    if (p->title && p->body) {
      memcpy(p->title, json_string_value(jt), p->title_len + 1);
      memcpy(p->body, jb ? json_string_value(jb) : "", p->body_len + 1);
      rc = notes_insert_note(p, post_done);
    }
  }
  json_decref(doc);
  if (rc != EVX_OK) {
    notes_post_free(p);
    reply_db_error(req, rc, NULL);
  }
}

/* ---- reads: GET /notes, GET /notes/{id} ------------------------------------------ */

typedef struct read_ctx {
  notes_app *app;
  evx_request *req;
  evx_future *f;
  int64_t id; /* GET /notes/{id}: the id; list: -1 */
} read_ctx;

static void read_done(evx_future *f, void *arg) {
  read_ctx *c = arg;
  int st = evx_future_status(f);
  evx_sql_result *r = st == EVX_OK ? evx_future_result(f) : NULL;
  if (!r || r->status != EVX_OK) {
    reply_db_error(c->req, r ? r->status : st, r ? r->errmsg : NULL);
  } else if (c->id >= 0) {
    if (r->nrows == 0) {
      char msg[64];
      snprintf(msg, sizeof msg, "note %lld not found", (long long)c->id);
      notes_reply_error(c->req, 404, msg);
    } else {
      reply_json(c->req, 200, note_json(r, 0));
    }
  } else {
    reply_json(c->req, 200, notes_array(r));
  }
  evx_future_release(f);
  free(c);
}

/* The client left: a query that has not started is cancelled (read_done
 * still runs and finishes the request, which answers EVX_EGONE). */
static void read_client_left(evx_request *req, void *arg) {
  (void)req;
  read_ctx *c = arg;
  evx_future_cancel(c->f);
}

static void start_read(notes_app *app, evx_request *req, int64_t id, const char *sql,
                       const evx_sql_value *p, size_t n) {
  read_ctx *c = malloc(sizeof *c);
  evx_future *f = c ? evx_sqlite_query_future(app->db, EVX_SQL_READ, sql, p, n) : NULL;
  if (!f || evx_future_on_done(f, read_done, c) != EVX_OK) {
    if (f) {
      evx_future_cancel(f);
      evx_future_release(f);
    }
    free(c);
    notes_reply_error(req, 500, "out of memory");
    return;
  }
  c->app = app;
  c->req = req;
  c->f = f;
  c->id = id;
  evx_request_on_close(req, read_client_left, c);
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
  start_read(arg, req, -1, SQL_LIST, p, 2);
}

static void on_get_one(evx_request *req, void *arg) {
  long long id; /* the route is /notes/{id} */
  if (parse_int(evx_request_param(req, "id"), 1, INT64_MAX, &id) != 0) {
    notes_reply_error(req, 404, "no such note: ids are positive integers");
    return;
  }
  evx_sql_value p = evx_sql_int(id);
  start_read(arg, req, id, SQL_ONE, &p, 1);
}

/* ---- GET /notes/wait ------------------------------------------------------------------ */

typedef struct wait_ctx {
  notes_app *app;
  evx_request *req;
  evx_future *f; /* the condition wait, then the read */
  long long since, limit;
  uint64_t deadline_ns;
  int reading;
} wait_ctx;

static void wait_fire(evx_future *f, void *arg);

static void wait_client_left(evx_request *req, void *arg) {
  (void)req;
  wait_ctx *c = arg;
  evx_future_cancel(c->f);
}

static void wait_finish(wait_ctx *c) {
  evx_future_release(c->f);
  free(c);
}

/* Wait on the condition until the deadline (0 on success). */
static int wait_arm(wait_ctx *c) {
  uint64_t now = notes_now_ns();
  uint64_t left_ms = c->deadline_ns > now ? (c->deadline_ns - now + 999999) / 1000000 : 1;
  evx_future *f = c->app->new_note ? evx_condition_wait(c->app->new_note, left_ms) : NULL;
  if (!f) return -1;
  if (evx_future_on_done(f, wait_fire, c) != EVX_OK) {
    evx_future_cancel(f);
    evx_future_release(f);
    return -1;
  }
  c->f = f;
  return 0;
}

/* New notes exist: read them (on the reader pool) and answer. */
static int wait_read(wait_ctx *c) {
  evx_sql_value p[2] = {evx_sql_int(c->since), evx_sql_int(c->limit)};
  evx_future *f = evx_sqlite_query_future(c->app->db, EVX_SQL_READ, SQL_LIST, p, 2);
  if (!f) return -1;
  if (evx_future_on_done(f, wait_fire, c) != EVX_OK) {
    evx_future_cancel(f);
    evx_future_release(f);
    return -1;
  }
  c->f = f;
  c->reading = 1;
  return 0;
}

static void wait_fire(evx_future *f, void *arg) {
  wait_ctx *c = arg;
  int st = evx_future_status(f);
  if (c->reading) {
    evx_sql_result *r = st == EVX_OK ? evx_future_result(f) : NULL;
    if (!r || r->status != EVX_OK)
      reply_db_error(c->req, r ? r->status : st, r ? r->errmsg : NULL);
    else
      reply_json(c->req, 200, notes_array(r));
    wait_finish(c);
    return;
  }
  evx_future_release(f);
  c->f = NULL;
  if (st == EVX_ETIMEDOUT) {
    evx_request_finish(c->req, 204, NULL, NULL, 0);
  } else if (st != EVX_OK) {
    /* cancelled (the client left: finish says EVX_EGONE) or the condition
     * was freed because the service is stopping */
    notes_reply_error(c->req, 503, "the service is shutting down");
  } else if (c->app->latest_id > c->since) {
    if (wait_read(c) == 0) return;
    notes_reply_error(c->req, 503, "cannot read the new notes");
  } else if (notes_now_ns() >= c->deadline_ns) {
    evx_request_finish(c->req, 204, NULL, NULL, 0);
  } else {
    if (wait_arm(c) == 0) return; /* woken for a note we already had: wait on */
    notes_reply_error(c->req, 503, "cannot wait");
  }
  free(c);
}

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
  wait_ctx *c = calloc(1, sizeof *c);
  if (!c) {
    notes_reply_error(req, 500, "out of memory");
    return;
  }
  c->app = app;
  c->req = req;
  c->since = since;
  c->limit = LIST_MAX;
  c->deadline_ns = notes_now_ns() + (uint64_t)timeout * 1000000ULL;
  int rc = app->latest_id > since ? wait_read(c) : wait_arm(c);
  if (rc != 0) {
    free(c);
    notes_reply_error(req, 503, "cannot wait");
    return;
  }
  evx_request_on_close(req, wait_client_left, c);
}

/* ---- routes ----------------------------------------------------------------------------- */

int notes_routes(notes_app *app) {
  evx_http *h = app->http;
  if (evx_http_route(h, "POST", "/notes", 0, on_post, app) ||
      evx_http_route(h, "GET", "/notes", 0, on_list, app) ||
      evx_http_route(h, "GET", "/notes/wait", 0, on_wait, app) ||
      evx_http_route(h, "GET", "/notes/{id}", 0, on_get_one, app) ||
      evx_http_route_metrics(h, "/metrics"))
    return -1;
  /* A long poll may wait --poll-timeout; every other request keeps the server's timeout. */
  uint64_t poll_ms = (uint64_t)app->cfg.poll_timeout_ms + 5000;
  if (evx_route_set_timeout(evx_http_route_find(h, "GET", "/notes/wait", 0), poll_ms) != EVX_OK)
    return -1;
  return notes_metrics_init(app);
}
