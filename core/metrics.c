/*
 * Metrics in the Prometheus text format: a builder that groups samples by
 * family, the application's sources, and the walk over the loop's members.
 *
 * DESIGN
 * - The text format wants every sample of a family together under one HELP
 *   and TYPE line, but members add theirs one member at a time (executor A's
 *   queue gauge, A's counters, then B's). So samples go to their family's own
 *   buffer (families in first-seen order) and the text is joined at the end.
 * - Core knows no member by name: executors, HTTP servers and task queues
 *   each set on_metrics on their loop member (evx-private.h); an application
 *   source is itself a loop member, so the loop frees it like any other.
 * Loop thread only; no locks (members take their own snapshots).
 */
#include "evx-private.h"

#include <evexec/metrics.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct evx__buf {
  char *p;
  size_t len, cap;
} evx__buf;

static int evx__buf_vadd(evx__buf *b, const char *fmt, va_list ap) {
  for (;;) {
    va_list aq;
    va_copy(aq, ap);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, aq);
    va_end(aq);
    if (n < 0) return EVX_EINVAL;
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return EVX_OK;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= (size_t)n) cap *= 2;
    char *np = evx_realloc(b->p, cap);
    if (!np) return EVX_ENOMEM;
    b->p = np;
    b->cap = cap;
  }
}

static int evx__buf_add(evx__buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = evx__buf_vadd(b, fmt, ap);
  va_end(ap);
  return rc;
}

typedef struct evx__family {
  char *name;
  const char *type; /* static string */
  char *help;       /* NULL: no HELP line */
  evx__buf samples;
} evx__family;

struct evx_metrics {
  evx__family *fam;
  size_t nfam, capfam;
  int err; /* first error: the text is then not returned */
};

static int evx__name_ok(const char *n) {
  if (!n || !*n) return 0;
  for (const char *p = n; *p; p++) {
    int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':';
    if (!alpha && !(p > n && *p >= '0' && *p <= '9')) return 0;
  }
  return 1;
}

static evx__family *evx__family_get(evx_metrics *m, const char *name, const char *type,
                                    const char *help) {
  for (size_t i = 0; i < m->nfam; i++)
    if (strcmp(m->fam[i].name, name) == 0) return &m->fam[i];
  if (m->nfam == m->capfam) {
    size_t cap = m->capfam ? m->capfam * 2 : 32;
    evx__family *nf = evx_realloc(m->fam, cap * sizeof *nf);
    if (!nf) return NULL;
    m->fam = nf;
    m->capfam = cap;
  }
  evx__family *f = &m->fam[m->nfam];
  memset(f, 0, sizeof *f);
  f->name = evx_strdup(name);
  f->help = help ? evx_strdup(help) : NULL;
  if (!f->name || (help && !f->help)) {
    evx_free(f->name);
    evx_free(f->help);
    return NULL;
  }
  f->type = type;
  m->nfam++;
  return f;
}

static int evx__fail(evx_metrics *m, int rc) {
  if (rc != EVX_OK && m->err == EVX_OK) m->err = rc;
  return rc;
}

/* %.17g prints integers below 2^53 exactly and without an exponent. */
static int evx__sample(evx_metrics *m, const char *type, const char *name, const char *help,
                       const char *labels, double value) {
  if (!m || !evx__name_ok(name)) return EVX_EINVAL;
  evx__family *f = evx__family_get(m, name, type, help);
  if (!f) return evx__fail(m, EVX_ENOMEM);
  int rc = labels && *labels ? evx__buf_add(&f->samples, "%s{%s} %.17g\n", name, labels, value)
                             : evx__buf_add(&f->samples, "%s %.17g\n", name, value);
  return evx__fail(m, rc);
}

int evx_metrics_counter(evx_metrics *m, const char *name, const char *help, const char *labels,
                        double value) {
  return evx__sample(m, "counter", name, help, labels, value);
}

int evx_metrics_gauge(evx_metrics *m, const char *name, const char *help, const char *labels,
                      double value) {
  return evx__sample(m, "gauge", name, help, labels, value);
}

int evx_metrics_histogram_log2us(evx_metrics *m, const char *name, const char *help,
                                 const char *labels, const uint64_t *hist, size_t nbuckets,
                                 uint64_t sum_ns) {
  if (!m || !evx__name_ok(name) || !hist || nbuckets == 0) return EVX_EINVAL;
  evx__family *f = evx__family_get(m, name, "histogram", help);
  if (!f) return evx__fail(m, EVX_ENOMEM);
  const char *sep = labels && *labels ? "," : "";
  if (!labels) labels = "";
  uint64_t cum = 0;
  int rc = EVX_OK;
  /* the last bucket also holds everything longer: it is the +Inf bucket */
  for (size_t i = 0; i + 1 < nbuckets && rc == EVX_OK; i++) {
    cum += hist[i];
    rc = evx__buf_add(&f->samples, "%s_bucket{%s%sle=\"%.17g\"} %llu\n", name, labels, sep,
                      (double)((uint64_t)1 << i) / 1e6, (unsigned long long)cum);
  }
  cum += hist[nbuckets - 1];
  if (rc == EVX_OK)
    rc = evx__buf_add(&f->samples, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                      (unsigned long long)cum);
  const char *open = *labels ? "{" : "", *close = *labels ? "}" : "";
  if (rc == EVX_OK)
    rc = evx__buf_add(&f->samples, "%s_sum%s%s%s %.9f\n%s_count%s%s%s %llu\n", name, open, labels,
                      close, (double)sum_ns / 1e9, name, open, labels, close,
                      (unsigned long long)cum);
  return evx__fail(m, rc);
}

char *evx_metrics_escape(const char *v, char *out, size_t cap) {
  if (!out || cap == 0) return out;
  size_t j = 0;
  for (const char *p = v ? v : ""; *p; p++) {
    const char *e = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
    size_t n = e ? 2 : 1;
    if (j + n >= cap) break;
    if (e) {
      out[j++] = e[0];
      out[j++] = e[1];
    } else {
      out[j++] = *p;
    }
  }
  out[j] = '\0';
  return out;
}

/* ---- application sources ---------------------------------------------- */

struct evx_metrics_source {
  evx__loop_member member;
  evx_loop *loop;
  evx_metrics_fn fn;
  void *arg;
};

static void evx__source_metrics(evx__loop_member *mb, evx_metrics *out) {
  evx_metrics_source *s = EVX__CONTAINER_OF(mb, evx_metrics_source, member);
  s->fn(out, s->arg);
}

static void evx__source_on_free(evx__loop_member *mb) {
  evx_free(EVX__CONTAINER_OF(mb, evx_metrics_source, member));
}

evx_metrics_source *evx_metrics_source_new(evx_loop *loop, evx_metrics_fn fn, void *arg) {
  if (!loop || !fn || !evx__loop_thread_ok(loop)) return evx__ctor_fail(EVX_EINVAL);
  evx_metrics_source *s = evx_calloc(1, sizeof *s);
  if (!s) return evx__ctor_fail(EVX_ENOMEM);
  s->loop = loop;
  s->fn = fn;
  s->arg = arg;
  evx__loop_member_add(loop, &s->member, NULL, evx__source_on_free);
  evx__loop_member_set_metrics(&s->member, evx__source_metrics);
  return s;
}

void evx_metrics_source_free(evx_metrics_source *s) {
  if (!s) return;
  if (!evx__loop_thread_ok(s->loop)) {
    /* Off the loop thread it would race the loop's member list. */
    fprintf(stderr, "evexec: evx_metrics_source_free called off the loop thread; ignored\n");
    return;
  }
  evx__loop_member_remove(&s->member);
  evx_free(s);
}

/* ---- rendering -------------------------------------------------------- */

static void evx__collect(evx__loop_member *mb, void *arg) {
  if (mb->on_metrics) mb->on_metrics(mb, arg);
}

int evx_loop_metrics_text(evx_loop *loop, char **out, size_t *len) {
  if (out) *out = NULL;
  if (len) *len = 0;
  if (!loop || !out || !evx__loop_thread_ok(loop)) return EVX_EINVAL;
  evx_metrics m = {0};
  evx__loop_member_foreach(loop, evx__collect, &m);
  evx__buf text = {0};
  int rc = m.err;
  if (rc == EVX_OK) rc = evx__buf_add(&text, "%s", ""); /* "" for no metrics, never NULL */
  for (size_t i = 0; i < m.nfam && rc == EVX_OK; i++) {
    evx__family *f = &m.fam[i];
    if (f->help) rc = evx__buf_add(&text, "# HELP %s %s\n", f->name, f->help);
    if (rc == EVX_OK)
      rc = evx__buf_add(&text, "# TYPE %s %s\n%s", f->name, f->type,
                        f->samples.p ? f->samples.p : "");
  }
  for (size_t i = 0; i < m.nfam; i++) {
    evx_free(m.fam[i].name);
    evx_free(m.fam[i].help);
    evx_free(m.fam[i].samples.p);
  }
  evx_free(m.fam);
  if (rc != EVX_OK) {
    evx_free(text.p);
    return rc;
  }
  *out = text.p;
  if (len) *len = text.len;
  return EVX_OK;
}
