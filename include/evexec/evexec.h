/**
 * @file evexec.h
 * Umbrella header: Tornado's offload model for libevent programs.
 * A loop thread that never blocks (loop.h), fixed worker pools for blocking
 * calls (executor.h), futures (future.h), long-poll conditions (condition.h)
 * coroutines (coro.h), locks and queues (sync.h), asynchronous HTTP handlers
 * (http.h) and Prometheus metrics (metrics.h).
 */
#ifndef EVEXEC_EVEXEC_H
#define EVEXEC_EVEXEC_H

#include <evexec/common.h>
#include <evexec/condition.h>
#include <evexec/coro.h>
#include <evexec/executor.h>
#include <evexec/future.h>
#include <evexec/http.h>
#include <evexec/loop.h>
#include <evexec/metrics.h>
#include <evexec/sync.h>

#endif /* EVEXEC_EVEXEC_H */
