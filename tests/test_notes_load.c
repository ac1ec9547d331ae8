/* The notes service under load: 1000 concurrent POSTs lose none, every id
 * holds what its POST sent, ids follow each client's order; reads keep
 * running in parallel with the writes. */
#include <sqlite3.h>

#include "evx_test.h"
#include "test_notes_server.h"

static notes_server S;

static void setup(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  memset(&S, 0, sizeof S);
}

static void teardown(void) { nt_cleanup(&S); }

/* Parse `"id":N,"title":"T"` from a reply; returns N or -1. */
static long long reply_id(const char *body, char *title, size_t size) {
  long long id;
  int at = 0;
  if (sscanf(body, "{\"id\":%lld,\"title\":\"%n", &id, &at) != 1 || !at) return -1;
  const char *q = strchr(body + at, '"');
  if (!q || (size_t)(q - body - at) >= size) return -1;
  memcpy(title, body + at, (size_t)(q - body - at));
  title[q - body - at] = '\0';
  return id;
}

#define CONCURRENT 1000
#define READERS 100

typedef struct xfer {
  CURL *h;
  nt_resp r;
  int client, seq, is_read;
  char body[96];
} xfer;

START_TEST(test_thousand_concurrent_posts) {
  const char *extra[] = {"--quiet", NULL};
  nt_start(&S, extra);
  static xfer x[CONCURRENT + READERS];
  CURLM *m = curl_multi_init();
  /* All at once: 1000 POSTs, each on its own connection, with 100 GETs mixed in. */
  curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
  for (int i = 0; i < CONCURRENT + READERS; i++) {
    x[i].is_read = i % 11 == 10 && i / 11 < READERS;
    if (x[i].is_read) {
      x[i].h = nt_easy(&S, "GET", "/notes?limit=5", NULL, &x[i].r);
    } else {
      snprintf(x[i].body, sizeof x[i].body, "{\"title\":\"load %d\",\"body\":\"payload of %d\"}", i, i);
      x[i].h = nt_easy(&S, "POST", "/notes", x[i].body, &x[i].r);
    }
    curl_easy_setopt(x[i].h, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(x[i].h, CURLOPT_PRIVATE, &x[i]);
    curl_multi_add_handle(m, x[i].h);
  }
  int running = 1;
  uint64_t t0 = nt_now_ms(), end = t0 + 25000;
  while (running && nt_now_ms() < end) {
    curl_multi_perform(m, &running);
    curl_multi_poll(m, NULL, 0, 50, NULL);
  }
  uint64_t spent = nt_now_ms() - t0;
  ck_assert_msg(running == 0, "%d transfers still running after %llu ms", running,
                (unsigned long long)spent);
  static char seen[CONCURRENT + READERS + 1];
  memset(seen, 0, sizeof seen);
  int posts = 0, reads = 0;
  for (int i = 0; i < CONCURRENT + READERS; i++) {
    nt_easy_done(x[i].h, &x[i].r);
    if (x[i].is_read) {
      ck_assert_int_eq(x[i].r.status, 200);
      ck_assert(x[i].r.body[0] == '[');
      reads++;
    } else {
      ck_assert_msg(x[i].r.status == 201, "POST %d: %ld %s", i, x[i].r.status, x[i].r.body);
      char title[64], want[64];
      long long id = reply_id(x[i].r.body, title, sizeof title);
      ck_assert_int_ge(id, 1);
      ck_assert_int_le(id, CONCURRENT);
      ck_assert_msg(!seen[id], "id %lld given twice", id);
      seen[id] = 1;
      snprintf(want, sizeof want, "load %d", i);
      ck_assert_str_eq(title, want);
      posts++;
    }
    curl_multi_remove_handle(m, x[i].h);
    curl_easy_cleanup(x[i].h);
  }
  curl_multi_cleanup(m);
  ck_assert_int_eq(posts, CONCURRENT);
  ck_assert_int_eq(reads, READERS);
  fprintf(stderr, "notes_load: %d POSTs + %d GETs concurrently in %llu ms\n", posts, reads,
          (unsigned long long)spent);

  /* Every id 1..1000 exists exactly once, and holds what its POST sent. */
  static nt_resp list;
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?limit=1000", NULL, &list), 200);
  const char *p = list.body;
  for (long long want = 1; want <= CONCURRENT; want++) {
    p = strstr(p, "{\"id\":");
    ck_assert_ptr_nonnull(p);
    char title[64];
    ck_assert_int_eq(reply_id(p, title, sizeof title), want);
    int n = atoi(title + 5);
    char body[64];
    snprintf(body, sizeof body, "\"body\":\"payload of %d\"", n);
    ck_assert_ptr_nonnull(strstr(p, body));
    p++;
  }
  ck_assert_ptr_null(strstr(p, "{\"id\":"));

  /* The SQLite file agrees. */
  sqlite3 *db;
  ck_assert_int_eq(sqlite3_open_v2(S.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st;
  ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*), count(DISTINCT title), min(id), max(id) FROM notes", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_int_eq(sqlite3_column_int(st, 0), CONCURRENT);
  ck_assert_int_eq(sqlite3_column_int(st, 1), CONCURRENT);
  ck_assert_int_eq(sqlite3_column_int(st, 2), 1);
  ck_assert_int_eq(sqlite3_column_int(st, 3), CONCURRENT);
  sqlite3_finalize(st);
  sqlite3_close(db);

  ck_assert_int_eq(nt_metric(&S, "notes_http_requests_total{method=\"POST\",status=\"201\"}"), CONCURRENT);
  /* The writer also carries the mail tasks' leases and acknowledgements. */
  ck_assert_double_ge(nt_metric(&S, "evx_executor_completed_total{executor=\"sqlite-write\"}"), CONCURRENT);
  ck_assert_int_eq(nt_wait_metric(&S, "notes_mail_sent_total", CONCURRENT, 10000), CONCURRENT);
  ck_assert_int_eq(nt_wait_metric(&S, "evx_tasks_completed_total{queue=\"notes-mail\"}", CONCURRENT, 5000),
                   CONCURRENT);
  int code = nt_stop(&S);
  ck_assert_msg(code == 0, "exit %d\n%s", code, nt_log(&S));
}
END_TEST

/* 40 clients, each sending 25 POSTs one after the other on its own
 * keep-alive connection, all clients at once: each client's notes get
 * increasing ids, in the order it sent them. */
#define CLIENTS 40
#define PER_CLIENT 25

START_TEST(test_order_per_client) {
  const char *extra[] = {"--quiet", NULL};
  nt_start(&S, extra);
  static xfer c[CLIENTS];
  static long long ids[CLIENTS][PER_CLIENT];
  CURLM *m = curl_multi_init();
  for (int i = 0; i < CLIENTS; i++) {
    c[i].client = i;
    snprintf(c[i].body, sizeof c[i].body, "{\"title\":\"c%d-%d\"}", i, 0);
    c[i].h = nt_easy(&S, "POST", "/notes", NULL, &c[i].r);
    curl_easy_setopt(c[i].h, CURLOPT_COPYPOSTFIELDS, c[i].body);
    curl_easy_setopt(c[i].h, CURLOPT_PRIVATE, &c[i]);
    curl_multi_add_handle(m, c[i].h);
  }
  int active = CLIENTS, running;
  uint64_t end = nt_now_ms() + 25000;
  while (active && nt_now_ms() < end) {
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE) continue;
      xfer *t;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
      ck_assert_int_eq(msg->data.result, CURLE_OK);
      nt_easy_done(t->h, &t->r);
      ck_assert_int_eq(t->r.status, 201);
      char title[64], want[64];
      ids[t->client][t->seq] = reply_id(t->r.body, title, sizeof title);
      snprintf(want, sizeof want, "c%d-%d", t->client, t->seq);
      ck_assert_str_eq(title, want);
      curl_multi_remove_handle(m, t->h);
      if (++t->seq == PER_CLIENT) {
        active--;
        continue;
      }
      /* Same handle, same connection: the next note of this client. */
      snprintf(t->body, sizeof t->body, "{\"title\":\"c%d-%d\"}", t->client, t->seq);
      nt_resp_reset(&t->r);
      curl_easy_setopt(t->h, CURLOPT_COPYPOSTFIELDS, t->body);
      curl_multi_add_handle(m, t->h);
    }
    curl_multi_poll(m, NULL, 0, 50, NULL);
  }
  ck_assert_int_eq(active, 0);
  for (int i = 0; i < CLIENTS; i++) {
    curl_easy_cleanup(c[i].h);
    for (int j = 1; j < PER_CLIENT; j++)
      ck_assert_msg(ids[i][j] > ids[i][j - 1], "client %d: note %d got id %lld after %lld", i, j,
                    ids[i][j], ids[i][j - 1]);
  }
  curl_multi_cleanup(m);
  /* The GET agrees: per client, titles appear in sequence order. */
  static nt_resp list;
  ck_assert_int_eq(nt_http(&S, "GET", "/notes?limit=1000", NULL, &list), 200);
  int next[CLIENTS] = {0};
  for (const char *p = list.body; (p = strstr(p, "\"title\":\"c")) != NULL; p++) {
    int cl, seq;
    ck_assert_int_eq(sscanf(p, "\"title\":\"c%d-%d\"", &cl, &seq), 2);
    ck_assert_int_eq(seq, next[cl]++);
  }
  for (int i = 0; i < CLIENTS; i++) ck_assert_int_eq(next[i], PER_CLIENT);
  int code = nt_stop(&S);
  ck_assert_msg(code == 0, "exit %d\n%s", code, nt_log(&S));
}
END_TEST

Suite *suite(void);
Suite *suite(void) {
  Suite *s = suite_create("notes_load");
  TCase *tc = tcase_create("notes_load");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_thousand_concurrent_posts);
  tcase_add_test(tc, test_order_per_client);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return evx_test_main(suite()); }
