/* An out-of-tree consumer of the installed optional libraries evexec_sqlite
 * and evexec_mail (built by scripts/install-check.sh with
 * `pkg-config --cflags --libs evexec_sqlite evexec_mail` and with
 * find_package). It runs one query through the pools and formats one mail.
 * argv[1]: a directory for the database file. Prints "consumer-ext: ok". */
#include <evexec/evexec.h>
#include <evexec/mail.h>
#include <evexec/sqlite.h>

#include <stdio.h>
#include <string.h>

static evx_loop *loop;
static long answer = -1;

static void on_row(evx_sql_result *res, void *arg) {
  (void)arg;
  if (res->status == EVX_OK && res->nrows == 1) answer = (long)evx_sql_get_int(res, 0, 0);
  evx_sql_result_free(res);
  evx_loop_stop(loop);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: consumer-ext DIR\n");
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/consumer.db", argv[1]);
  loop = evx_loop_new(NULL);
  evx_sqlite *db = NULL;
  char *err = NULL;
  int rc = loop ? evx_sqlite_open(loop, path, &(evx_sqlite_opts){.readers = 1}, &db, &err)
                : EVX_ENOMEM;
  if (rc != EVX_OK) {
    fprintf(stderr, "consumer-ext: evx_sqlite_open: %s %s\n", evx_err_name(rc), err ? err : "");
    return 1;
  }
  evx_sql_value p = evx_sql_int(41);
  rc = evx_sqlite_query(db, EVX_SQL_READ, "SELECT ? + 1", &p, 1, on_row, NULL);
  if (rc == EVX_OK) rc = evx_loop_run(loop);
  evx_sqlite_close(db);
  evx_loop_free(loop);
  char *text = NULL;
  int mrc = evx_mail_format(&(evx_mail_msg){.to = "a@example.org", .subject = "hi", .body = "x"},
                            NULL, &text, NULL);
  int mail_ok = mrc == EVX_OK && strstr(text, "Subject: hi") != NULL;
  evx_free(text);
  if (rc != EVX_OK || answer != 42 || !mail_ok) {
    fprintf(stderr, "consumer-ext: wrong outcome: run=%s answer=%ld mail=%s\n", evx_err_name(rc),
            answer, evx_err_name(mrc));
    return 1;
  }
  printf("consumer-ext: ok (answer=%ld)\n", answer);
  return 0;
}
