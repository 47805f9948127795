# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The gateway's fast lane: the common request (one whole ``GET``/``POST`` to ``/v2/models/...`` over HTTP/1.1 in one
read, nothing pending on its connection) parsed, routed and forwarded in C, without a Python call per header.

Everything else takes the Python path (``http1.ServerConnection`` with llhttp, then ``Gateway.handle``), which also
answers whatever the lane declines: a head or a header it does not accept (it refuses nothing itself: a request it
finds odd goes to the strict parser, which decides), a request split over reads or pipelined, chunked bodies,
``Expect``, ``Upgrade``, ``Connection`` other than ``keep-alive``, HTTP/1.0, a body over the limit, a token not
verified lately, a route that refuses, a replica to pick that is not usable. The decision itself is the Python
path's (:meth:`Gateway.fast_route`): the lane keeps it by (method, path, token, origin) and forgets it every
``period`` seconds (at most half the token cache time), and whenever the gateway re-reads its routing table. 
The replicas' answers come back through :func:`answered` when they are plain (whole, a status other than 401 or
5xx, the connection kept), else the Python path's way (``_Call.done``: retries, ejection, counters).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from .gateway cimport Gateway, _Call, _Deployment, _Replica, _Route
from .http1 cimport Request, ServerConnection, UpstreamConnection, UpstreamPool


cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)


cdef enum:
    MAX_HEAD = 65536  # as http1.MAX_HEAD_BYTES
    NO = -1


cdef unsigned char TCHAR[256]
for _c in list(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
    TCHAR[_c] = 1

cdef dict NO_HEADERS = {}
cdef object SLOW = False  # a key whose requests take the Python path until the lane forgets its routes (as
                         # Gateway.fast_route says it)
cdef str NOT_READY = "no replica is ready"


cdef inline const unsigned char* blank_line(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Where ``\\r\\n\\r\\n`` starts in ``p[:n]``, or NULL (memchr for each CR: faster than glibc's memmem for a
    needle this short)."""
    cdef const unsigned char* end = p + n
    cdef const unsigned char* cr = p
    while True:
        cr = <const unsigned char*> memchr(cr, 13, end - cr)
        if cr == NULL or end - cr < 4:
            return NULL
        if cr[1] == 10 and cr[2] == 13 and cr[3] == 10:
            return cr
        cr += 1


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # time.monotonic's clock
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint named(const unsigned char* p, Py_ssize_t n, const char* lower, Py_ssize_t m) noexcept nogil:
    """Whether the header name ``p[:n]`` (token characters) is ``lower``, case-insensitively."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if (p[i] | 0x20) != <unsigned char> lower[i]:
            return False
    return True


cdef inline Py_ssize_t put(char* out, const unsigned char* src, Py_ssize_t n) noexcept nogil:
    memcpy(out, src, n)
    return n


cdef class FastLane:
    """``lane(connection, data)``: True if it took ``data`` (see the module docstring)."""

    cdef Gateway gateway
    cdef dict routes
    cdef double period, expires, try_timeout
    cdef long long max_body
    cdef public unsigned long long taken, declined

    def __init__(self, Gateway gateway, double period):
        self.gateway, self.routes, self.period, self.expires = gateway, {}, period, 0.0
        self.try_timeout = gateway.config.try_timeout_s
        self.max_body = gateway.config.max_body_bytes
        self.taken = self.declined = 0

    def clear(self):
        """Forget every route (the gateway re-read its routing table)."""
        self.routes.clear()

    def __call__(self, ServerConnection conn, bytes data):
        if self.take(conn, data):
            self.taken += 1
            return True
        self.declined += 1
        return False

    cdef bint take(self, ServerConnection conn, bytes data) except -1:
        cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = len(data)
        cdef const unsigned char* blank = blank_line(p, n)
        if blank == NULL or blank - p > MAX_HEAD:
            return False
        cdef Py_ssize_t head = blank - p, i, path0, path1, line, colon, v0, v1, k
        cdef bint post
        if memcmp(p, b"POST ", 5) == 0:
            post, i = True, 5
        elif memcmp(p, b"GET ", 4) == 0:
            post, i = False, 4
        else:
            return False
        path0 = i
        if head - i < 11 or memcmp(p + i, b"/v2/models/", 11) != 0:
            return False
        while i < head and p[i] != 32:  # ' '
            if p[i] < 0x21 or p[i] > 0x7E or p[i] == 63:  # '?': queries take the Python path
                return False
            i += 1
        path1 = i
        if head - i < 9 or memcmp(p + i, b" HTTP/1.1", 9) != 0:
            return False
        i += 9
        cdef long long length = NO
        cdef Py_ssize_t auth0 = NO, auth1 = NO, org0 = NO, org1 = NO, rid0 = NO, rid1 = NO
        cdef Py_ssize_t tp0 = NO, tp1 = NO, ct0 = NO, ct1 = NO
        cdef Py_ssize_t stop = head + 2  # after the last header line's CRLF
        if i != head:
            if p[i] != 13 or p[i + 1] != 10:
                return False
            i += 2
        while i < stop:
            line = i
            while i < stop and TCHAR[p[i]]:
                i += 1
            if i == line or i >= stop or p[i] != 58:  # ':'
                return False
            colon = i
            i += 1
            while i < stop and (p[i] == 32 or p[i] == 9):
                i += 1
            v0 = i
            while i < stop and p[i] != 13:
                if (p[i] < 32 and p[i] != 9) or p[i] >= 0x7F:
                    return False
                i += 1
            if i >= stop or p[i + 1] != 10:
                return False
            v1 = i  # trailing whitespace kept, as llhttp keeps it
            i += 2
            k = colon - line
            if k < 6 or k > 17 or (p[line] | 0x20) not in b"acetux":  # not a name the lane looks at
                continue
            if named(p + line, k, b"content-length", 14):
                if length != NO or v1 == v0 or v1 - v0 > 15:
                    return False
                length = 0
                for v0 in range(v0, v1):
                    if p[v0] < 48 or p[v0] > 57:
                        return False
                    length = length * 10 + (p[v0] - 48)
            elif named(p + line, k, b"authorization", 13):
                if auth0 != NO:
                    return False
                auth0, auth1 = v0, v1
            elif named(p + line, k, b"x-archipel-origin", 17):
                if org0 != NO:
                    return False
                org0, org1 = v0, v1
            elif named(p + line, k, b"x-request-id", 12):
                rid0, rid1 = v0, v1
            elif named(p + line, k, b"traceparent", 11):
                tp0, tp1 = v0, v1
            elif named(p + line, k, b"content-type", 12):
                ct0, ct1 = v0, v1
            elif named(p + line, k, b"connection", 10):
                if not named(p + v0, v1 - v0, b"keep-alive", 10):
                    return False
            elif (named(p + line, k, b"transfer-encoding", 17) or named(p + line, k, b"expect", 6)
                  or named(p + line, k, b"upgrade", 7)):
                return False
        if length == NO:
            if post:
                return False
            length = 0
        if n - (head + 4) != length or length > self.max_body:
            return False

        # the route, by method, path, token and origin
        cdef Py_ssize_t size = 1 + (path1 - path0) + 2 + (auth1 - auth0 if auth0 != NO else 1)
        size += org1 - org0 if org0 != NO else 1
        cdef bytes key = PyBytes_FromStringAndSize(NULL, size)
        cdef char* out = PyBytes_AS_STRING(key)
        out[0] = 80 if post else 71  # P, G
        k = 1 + put(out + 1, p + path0, path1 - path0)
        out[k] = 10
        k += 1
        if auth0 != NO:
            k += put(out + k, p + auth0, auth1 - auth0)
        else:
            out[k] = 0
            k += 1
        out[k] = 10
        k += 1
        if org0 != NO:
            put(out + k, p + org0, org1 - org0)
        else:
            out[k] = 0
        cdef double t = now()
        if t >= self.expires:
            self.routes.clear()
            self.expires = t + self.period
        cdef PyObject* found = PyDict_GetItem(self.routes, key)
        cdef object decided
        if found == NULL:
            decided = self.gateway.fast_route(
                "POST" if post else "GET", data[path0:path1].decode("latin-1"),
                data[auth0:auth1] if auth0 != NO else None, data[org0:org1] if org0 != NO else None)
            if decided is True:  # not now (its token is being looked up)
                return False
            self.routes[key] = SLOW if decided is False else decided
            if decided is False:
                return False
        elif <object> found is SLOW:
            return False
        else:
            decided = <object> found
        cdef _Route route = <_Route> decided
        cdef _Deployment deployment = <_Deployment> route.deployment
        cdef list allowed = <list> route.allowed
        cdef _Replica replica
        if len(allowed) == 1 and deployment.canary_version is None:
            replica = <_Replica> allowed[0]
            if not replica.healthy or t < replica.ejected_until:
                return False
        else:
            picked = self.gateway._pick(deployment, allowed, route.origin, ())
            if picked is None:
                return False
            replica = <_Replica> picked

        # the request to the replica: the route's request line and fixed headers, the length, the passed headers
        cdef bytes prefix = <bytes> route.prefix
        cdef char digits[24]
        cdef Py_ssize_t ndigits = 0
        cdef long long rest = length
        while True:
            digits[ndigits] = 48 + rest % 10
            ndigits += 1
            rest //= 10
            if rest == 0:
                break
        size = len(prefix) + 16 + ndigits + 2 + 2 + length
        if rid0 != NO:
            size += 14 + (rid1 - rid0) + 2
        if tp0 != NO:
            size += 13 + (tp1 - tp0) + 2
        if ct0 != NO:
            size += 14 + (ct1 - ct0) + 2
        cdef bytes upstream = PyBytes_FromStringAndSize(NULL, size)
        out = PyBytes_AS_STRING(upstream)
        k = put(out, <const unsigned char*> PyBytes_AS_STRING(prefix), len(prefix))
        k += put(out + k, <const unsigned char*> b"content-length: ", 16)
        while ndigits:
            ndigits -= 1
            out[k] = digits[ndigits]
            k += 1
        k += put(out + k, <const unsigned char*> b"\r\n", 2)
        if rid0 != NO:
            k += put(out + k, <const unsigned char*> b"x-request-id: ", 14)
            k += put(out + k, p + rid0, rid1 - rid0)
            k += put(out + k, <const unsigned char*> b"\r\n", 2)
        if tp0 != NO:
            k += put(out + k, <const unsigned char*> b"traceparent: ", 13)
            k += put(out + k, p + tp0, tp1 - tp0)
            k += put(out + k, <const unsigned char*> b"\r\n", 2)
        if ct0 != NO:
            k += put(out + k, <const unsigned char*> b"content-type: ", 14)
            k += put(out + k, p + ct0, ct1 - ct0)
            k += put(out + k, <const unsigned char*> b"\r\n", 2)
        k += put(out + k, <const unsigned char*> b"\r\n", 2)
        put(out + k, p + head + 4, length)

        cdef Request request = Request.__new__(Request)
        request.method, request.path, request.body, request.keep_alive = "POST" if post else "GET", route.path, b"", True
        request.headers = {b"x-request-id": data[rid0:rid1]} if rid0 != NO else NO_HEADERS
        request.answer = None
        cdef _Call call = _Call.__new__(_Call)
        call.gateway, call.conn, call.request, call.deployment = self.gateway, conn, request, deployment
        call.allowed, call.origin, call.data, call.replica = allowed, route.origin, upstream, replica
        call.tried, call.attempt, call.error = (replica.id,), 0, NOT_READY
        call.sent, call.deadline = t, t + self.try_timeout
        replica.in_flight += 1
        conn.pending.append(request)
        (replica._pool if replica._pool is not None else replica.pool()).submit(call)
        return True


cdef inline Py_ssize_t whole(const unsigned char* p, Py_ssize_t at, Py_ssize_t n, Py_ssize_t* blank,
                             int* status) noexcept nogil:
    """The end of the plain answer at ``p[at:]`` (``blank``: its head's blank line; ``status``), or -1: not whole, not
    an archipel replica's answer (``HTTP/1.1 NNN ...`` then ``content-length``), a failure the Python path retries
    (5xx, 401), or one that closes the connection."""
    cdef const unsigned char* found = blank_line(p + at, n - at)
    if found == NULL or n - at < 32 or memcmp(p + at, b"HTTP/1.1 ", 9) != 0:
        return -1
    cdef Py_ssize_t end = found - p, i, line
    cdef long long length = 0
    status[0] = 0
    for i in range(at + 9, at + 12):
        if p[i] < 48 or p[i] > 57:
            return -1
        status[0] = status[0] * 10 + (p[i] - 48)
    if status[0] < 200 or status[0] >= 500 or status[0] == 401:
        return -1
    found = <const unsigned char*> memchr(p + at, 13, end - at)
    if found == NULL or found[1] != 10:
        return -1
    line = found - p + 2
    if end - line < 17 or memcmp(p + line, b"content-length: ", 16) != 0:
        return -1
    i = line + 16
    while p[i] != 13:
        if p[i] < 48 or p[i] > 57 or i - line > 32:
            return -1
        length = length * 10 + (p[i] - 48)
        i += 1
    if memmem(p + at, end + 2 - at, b"connection: close\r\n", 19) != NULL:
        return -1
    blank[0] = end
    if n - (end + 4) < length:
        return -1
    return end + 4 + length


def answered(UpstreamConnection up, bytes data):
    """A replica's answers in ``data`` passed on in C (True), when every one is whole and plain (see :func:`whole`)
    and answers a request forwarded for a client (a :class:`_Call`); else nothing is done (False) and
    ``UpstreamConnection.data_received`` reads them (as it reads health checks' answers)."""
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = len(data), at = 0, end, blank = 0, count = 0, size, k
    cdef int status = 0
    inflight = up.inflight
    cdef Py_ssize_t waiting = len(inflight)
    while at < n:  # all or nothing: check them all first
        end = whole(p, at, n, &blank, &status)
        if end < 0 or count >= waiting:
            return False
        exchange = inflight[count]
        if type(exchange) is not _Call or type((<_Call> exchange).conn) is not ServerConnection:
            return False
        count += 1
        at = end
    cdef double t = now()
    cdef _Call call
    cdef _Replica replica
    cdef ServerConnection conn
    cdef Request request
    cdef bytes site, out
    cdef char* o
    cdef tuple key
    at = 0
    while at < n:
        end = whole(p, at, n, &blank, &status)
        call = <_Call> inflight.popleft()
        if not inflight:
            up.idle_since = t
            up.pool.idle.append(up)
        replica = <_Replica> call.replica
        replica.in_flight -= 1
        replica.failures = 0
        replica.served += 1
        replica.latency_s += 0.2 * (t - call.sent - replica.latency_s)
        key = ((<_Deployment> call.deployment).name, status)
        answers = call.gateway.answers
        answers[key] = answers.get(key, 0) + 1
        conn, request, site = <ServerConnection> call.conn, call.request, <bytes> replica.site_header
        pending = conn.pending
        if request.answer is not None:
            pass
        elif (request.keep_alive is True and len(pending) == 1 and pending[0] is request and not conn._out
              and not conn.closed):
            pending.popleft()  # as ServerConnection.respond_head: nothing before or behind it, straight out
            request.answer = b""
            size = (blank + 2 - at) + len(site) + 2 + (end - blank - 4)
            out = PyBytes_FromStringAndSize(NULL, size)
            o = PyBytes_AS_STRING(out)
            k = put(o, p + at, blank + 2 - at)
            k += put(o + k, <const unsigned char*> PyBytes_AS_STRING(site), len(site))
            k += put(o + k, <const unsigned char*> b"\r\n", 2)
            put(o + k, p + blank + 4, end - blank - 4)
            conn.transport.write(out)
            conn.last = t
            if conn.paused:
                conn.paused = False
                if conn.writable:
                    conn.transport.resume_reading()
        else:
            conn.respond_head(request, data[at:blank + 2] + site, data[blank + 4:end])
        at = end
    cdef UpstreamPool pool = up.pool
    if pool._queue and not pool._flush_due:  # requests held while these answers were computed
        pool._flush()
    return True
