/* PRIVATE to evexec: never installed, never included by users.
 * Handles that detect staleness: an opaque public handle (evx_timer *) is an
 * encoded (slot, generation) id, not the object's address, so a handle kept
 * past its object's end names nothing - it can never reach freed memory or a
 * later object that reuses the memory. */
#ifndef EVX_HANDLE_INTERNAL_H
#define EVX_HANDLE_INTERNAL_H

#include <stdint.h>

#include "common-internal.h"

/* An encoded handle; never 0. */
typedef uintptr_t evx__hid;

/* Register obj: *out gets a fresh handle. EVX_OK or EVX_ENOMEM. Any thread. */
int evx__handle_new(void *obj, evx__hid *out);

/* The object of a live handle, removed from the table - or NULL when h is
 * stale, was never issued, or ok(obj) says no (then it stays live). ok runs
 * under the table's lock: it may read the object but not call out. */
void *evx__handle_take(evx__hid h, int (*ok)(void *obj));

/* The object of a live handle, left live - or NULL, as for take. The caller
 * must know the object cannot end meanwhile (e.g. it ends only on the
 * calling thread, which ok checked). */
void *evx__handle_get(evx__hid h, int (*ok)(void *obj));

/* A placeholder object for evx__handle_new: the handle exists (so making it
 * cannot fail later) but names nothing until evx__handle_bind. */
extern char evx__handle_reserved;
void evx__handle_bind(evx__hid h, void *obj);

/* End a live handle (the object's own end: it fired, or its owner is freed).
 * Every later take of h answers NULL. */
void evx__handle_drop(evx__hid h);

#endif
