/* PRIVATE to evexec_tasks: never installed, never included by users.
 *
 * The Lua scripts of the Redis backend (ext/tasks/backend-redis.c). Each runs
 * atomically in Redis; they are loaded on every new connection (SCRIPT LOAD)
 * and called with EVALSHA. Keys of one queue share the hash tag {QUEUE}:
 *   evx:{Q}:s      the stream (ready and leased tasks), consumer group "evx"
 *   evx:{Q}:z      delayed tasks: sorted set of task ids, score = due ms
 *   evx:{Q}:d:ID   a delayed task's fields (hash)
 *   evx:{Q}:dead   the dead-letter stream
 *   evx:{Q}:di     dead index: task id -> dead stream entry id (hash)
 *   evx:{Q}:seq    counter for the ids of tasks enqueued with a delay
 *   evx:{Q}:k:KEY  idempotency key -> task id (expires after 7 days)
 * Entry fields: n name, p payload, k key, m max attempts, b backoff ms,
 * t enqueued ms, i task id (absent: the entry id is the task id),
 * a deliveries already used before this entry, e last error; dead entries
 * add d (died ms). A task's attempt = a + the entry's delivery count.
 */
#ifndef EVX_TASKS_BACKEND_REDIS_LUA_H
#define EVX_TASKS_BACKEND_REDIS_LUA_H

/* Shared helpers: field lookup, a copy without some fields, dead-lettering. */
#define EVX__LUA_PRELUDE                                                                   \
  "local function field(f, k)\n"                                                           \
  "  for i = 1, #f, 2 do if f[i] == k then return f[i + 1] end end\n"                      \
  "  return nil\n"                                                                         \
  "end\n"                                                                                  \
  "local function copy(f, id, skip)\n"                                                     \
  "  local o = {'i', field(f, 'i') or id}\n"                                               \
  "  for i = 1, #f, 2 do\n"                                                                \
  "    local k = f[i]\n"                                                                   \
  "    if k ~= 'i' and not skip[k] then o[#o + 1] = k; o[#o + 1] = f[i + 1] end\n"         \
  "  end\n"                                                                                \
  "  return o\n"                                                                           \
  "end\n"                                                                                  \
  "local function bury(s, g, dead, idx, id, f, err, attempts, now)\n"                      \
  "  local d = copy(f, id, {a = true, e = true, d = true})\n"                              \
  "  d[#d + 1] = 'a'; d[#d + 1] = tostring(attempts)\n"                                    \
  "  d[#d + 1] = 'e'; d[#d + 1] = err\n"                                                   \
  "  d[#d + 1] = 'd'; d[#d + 1] = now\n"                                                   \
  "  local did = redis.call('XADD', dead, '*', unpack(d))\n"                               \
  "  redis.call('HSET', idx, d[2], did)\n"                                                 \
  "  redis.call('XACK', s, g, id)\n"                                                       \
  "  redis.call('XDEL', s, id)\n"                                                          \
  "end\n"

/* ENQUEUE  KEYS: stream, delayed, key (or ""), seq
 *          ARGV: due_ms, now_ms, delayed-hash prefix, key ttl s, fields...
 * -> {task id, 1 if deduplicated}. */
#define EVX__LUA_ENQUEUE                                                                   \
  "local kk = KEYS[3]\n"                                                                   \
  "if kk ~= '' then\n"                                                                     \
  "  if not redis.call('SET', kk, '', 'NX', 'EX', ARGV[4]) then\n"                         \
  "    return {redis.call('GET', kk), 1}\n"                                                \
  "  end\n"                                                                                \
  "end\n"                                                                                  \
  "local f = {}\n"                                                                         \
  "for i = 5, #ARGV do f[#f + 1] = ARGV[i] end\n"                                          \
  "local id\n"                                                                             \
  "if tonumber(ARGV[1]) > tonumber(ARGV[2]) then\n"                                        \
  "  id = 'd' .. redis.call('INCR', KEYS[4])\n"                                            \
  "  f[#f + 1] = 'i'; f[#f + 1] = id\n"                                                    \
  "  redis.call('HSET', ARGV[3] .. id, unpack(f))\n"                                       \
  "  redis.call('ZADD', KEYS[2], ARGV[1], id)\n"                                           \
  "else\n"                                                                                 \
  "  id = redis.call('XADD', KEYS[1], '*', unpack(f))\n"                                   \
  "end\n"                                                                                  \
  "if kk ~= '' then redis.call('SET', kk, id, 'KEEPTTL') end\n"                            \
  "return {id, 0}\n"

/* LEASE  KEYS: stream, delayed, dead, dead index
 *        ARGV: group, consumer, count, visibility ms, now ms, delayed-hash
 *              prefix, claim cursor, "1" to look for expired leases (the
 *              PEL scan is the costly part: the caller does it now and then)
 * Moves due delayed tasks onto the stream, takes over leases idle longer
 * than the visibility timeout (XAUTOCLAIM from the cursor), dead-letters
 * those that used their last attempt, then reads new entries (XREADGROUP,
 * no BLOCK) up to count. -> {next cursor, {{entry id, deliveries, fields}...}} */
#define EVX__LUA_LEASE                                                                     \
  EVX__LUA_PRELUDE                                                                         \
  "local s, z, dead, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n"                           \
  "local g, c, n, vis, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]\n"      \
  "for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)) do\n" \
  "  local h = ARGV[6] .. id\n"                                                            \
  "  local f = redis.call('HGETALL', h)\n"                                                 \
  "  if #f > 0 then redis.call('XADD', s, '*', unpack(f)) end\n"                           \
  "  redis.call('DEL', h)\n"                                                               \
  "  redis.call('ZREM', z, id)\n"                                                          \
  "end\n"                                                                                  \
  "local out, cursor = {}, ARGV[7]\n"                                                      \
  "if n > 0 and ARGV[8] == '1' then\n"                                                     \
  "  local r = redis.call('XAUTOCLAIM', s, g, c, vis, cursor, 'COUNT', n)\n"               \
  "  cursor = r[1]\n"                                                                      \
  "  for _, e in ipairs(r[2]) do\n"                                                        \
  "    local id, f = e[1], e[2]\n"                                                         \
  "    local p = redis.call('XPENDING', s, g, id, id, 1)\n"                                \
  "    local dl = (p[1] and tonumber(p[1][4])) or 1\n"                                     \
  "    local a = tonumber(field(f, 'a') or '0') or 0\n"                                    \
  "    local m = tonumber(field(f, 'm') or '0') or 0\n"                                    \
  "    if m > 0 and a + dl > m then\n"                                                     \
  "      bury(s, g, dead, idx, id, f, 'lease expired on the last attempt (the worker died or " \
  "hung past the visibility timeout)', a + dl - 1, now)\n"                                 \
  "    else\n"                                                                             \
  "      out[#out + 1] = {id, dl, f}\n"                                                    \
  "    end\n"                                                                              \
  "  end\n"                                                                                \
  "end\n"                                                                                  \
  "local left = n - #out\n"                                                                \
  "if left > 0 then\n"                                                                     \
  "  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', left, 'STREAMS', s, '>')\n" \
  "  if r then for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], 1, e[2]} end end\n"   \
  "end\n"                                                                                  \
  "return {cursor, out}\n"

/* SETTLE  KEYS: stream, delayed, dead, dead index
 *         ARGV: group, mode (done|retry|release|fail), entry id, consumer,
 *               deliveries, attempt, error, due ms, now ms, delayed-hash prefix
 * (DONE is not a script: XACK + XDEL, see backend-redis.c.)
 * Changes nothing (-> 0) unless the entry is still leased by this consumer
 * with this delivery count (a late answer for a lease that expired and was
 * taken over). done: ack + delete. retry: a copy with a = attempt and the
 * error, on the stream now or in the delayed set until due. release: a copy
 * with a = attempt - 1 (the delivery is not counted). fail: dead-letter. -> 1 */
#define EVX__LUA_SETTLE                                                                    \
  EVX__LUA_PRELUDE                                                                         \
  "local s, z, dead, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n"                           \
  "local g, mode, id, c = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"                            \
  "local p = redis.call('XPENDING', s, g, id, id, 1)\n"                                    \
  "if not p[1] or p[1][2] ~= c or tonumber(p[1][4]) ~= tonumber(ARGV[5]) then return 0 end\n" \
  "if mode == 'done' then\n"                                                               \
  "  redis.call('XACK', s, g, id)\n"                                                       \
  "  redis.call('XDEL', s, id)\n"                                                          \
  "  return 1\n"                                                                           \
  "end\n"                                                                                  \
  "local e = redis.call('XRANGE', s, id, id)\n"                                            \
  "local f = (e[1] and e[1][2]) or {}\n"                                                   \
  "local attempt = tonumber(ARGV[6])\n"                                                    \
  "if mode == 'fail' then\n"                                                               \
  "  bury(s, g, dead, idx, id, f, ARGV[7], attempt, ARGV[9])\n"                            \
  "  return 1\n"                                                                           \
  "end\n"                                                                                  \
  "local skip = {a = true}\n"                                                              \
  "if ARGV[7] ~= '' then skip.e = true end\n"                                              \
  "local o = copy(f, id, skip)\n"                                                          \
  "o[#o + 1] = 'a'; o[#o + 1] = tostring(mode == 'release' and attempt - 1 or attempt)\n"  \
  "if ARGV[7] ~= '' then o[#o + 1] = 'e'; o[#o + 1] = ARGV[7] end\n"                       \
  "if mode == 'retry' and tonumber(ARGV[8]) > tonumber(ARGV[9]) then\n"                    \
  "  redis.call('HSET', ARGV[10] .. o[2], unpack(o))\n"                                    \
  "  redis.call('ZADD', z, ARGV[8], o[2])\n"                                               \
  "else\n"                                                                                 \
  "  redis.call('XADD', s, '*', unpack(o))\n"                                              \
  "end\n"                                                                                  \
  "redis.call('XACK', s, g, id)\n"                                                         \
  "redis.call('XDEL', s, id)\n"                                                            \
  "return 1\n"

/* DEAD_RETRY  KEYS: stream, dead, dead index   ARGV: task id or "" (all, 1000 at a time)
 * Puts dead tasks back on the stream with their attempts reset. -> count */
#define EVX__LUA_DEAD_RETRY                                                                \
  EVX__LUA_PRELUDE                                                                         \
  "local s, dead, idx = KEYS[1], KEYS[2], KEYS[3]\n"                                       \
  "local function revive(did, f)\n"                                                        \
  "  local o = copy(f, did, {a = true, e = true, d = true})\n"                             \
  "  redis.call('XADD', s, '*', unpack(o))\n"                                              \
  "  redis.call('XDEL', dead, did)\n"                                                      \
  "  redis.call('HDEL', idx, o[2])\n"                                                      \
  "end\n"                                                                                  \
  "if ARGV[1] ~= '' then\n"                                                                \
  "  local did = redis.call('HGET', idx, ARGV[1])\n"                                       \
  "  if not did then return 0 end\n"                                                       \
  "  local e = redis.call('XRANGE', dead, did, did)\n"                                     \
  "  if not e[1] then redis.call('HDEL', idx, ARGV[1]) return 0 end\n"                     \
  "  revive(did, e[1][2])\n"                                                               \
  "  return 1\n"                                                                           \
  "end\n"                                                                                  \
  "local n = 0\n"                                                                          \
  "for _, e in ipairs(redis.call('XRANGE', dead, '-', '+', 'COUNT', 1000)) do\n"           \
  "  revive(e[1], e[2]); n = n + 1\n"                                                      \
  "end\n"                                                                                  \
  "return n\n"

/* DEAD_PURGE  KEYS: dead, dead index   ARGV: task id or "" (all) -> count */
#define EVX__LUA_DEAD_PURGE                                                                \
  "local dead, idx = KEYS[1], KEYS[2]\n"                                                   \
  "if ARGV[1] ~= '' then\n"                                                                \
  "  local did = redis.call('HGET', idx, ARGV[1])\n"                                       \
  "  if not did then return 0 end\n"                                                       \
  "  redis.call('HDEL', idx, ARGV[1])\n"                                                   \
  "  return redis.call('XDEL', dead, did)\n"                                               \
  "end\n"                                                                                  \
  "local n = redis.call('XLEN', dead)\n"                                                   \
  "redis.call('DEL', dead, idx)\n"                                                         \
  "return n\n"

/* BYE  KEYS: stream   ARGV: group, consumer
 * At shutdown: every entry still leased by this consumer (deliveries that
 * were in flight and never reached the layer) goes back on the stream, not
 * counted as an attempt; then the consumer leaves the group. -> count */
#define EVX__LUA_BYE                                                                       \
  EVX__LUA_PRELUDE                                                                         \
  "local s, g, c = KEYS[1], ARGV[1], ARGV[2]\n"                                            \
  "local p = redis.call('XPENDING', s, g, '-', '+', 1000, c)\n"                            \
  "for _, x in ipairs(p) do\n"                                                             \
  "  local id, dl = x[1], tonumber(x[4])\n"                                                \
  "  local e = redis.call('XRANGE', s, id, id)\n"                                          \
  "  if e[1] then\n"                                                                       \
  "    local f = e[1][2]\n"                                                                \
  "    local o = copy(f, id, {a = true})\n"                                                \
  "    o[#o + 1] = 'a'; o[#o + 1] = tostring((tonumber(field(f, 'a') or '0') or 0) + dl - 1)\n" \
  "    redis.call('XADD', s, '*', unpack(o))\n"                                            \
  "  end\n"                                                                                \
  "  redis.call('XACK', s, g, id)\n"                                                       \
  "  redis.call('XDEL', s, id)\n"                                                          \
  "end\n"                                                                                  \
  "if #p < 1000 then redis.call('XGROUP', 'DELCONSUMER', s, g, c) end\n"                   \
  "return #p\n"

#endif
