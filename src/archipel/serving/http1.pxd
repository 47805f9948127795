# Types of http1.py's classes when scripts/build_native.py compiles it with Cython (pure Python mode: http1.py runs
# unchanged without it). Attributes only; every method stays a Python-visible def. See _native/__init__.py.

cdef class Request:
    cdef public object answer, body, headers, keep_alive, method, path

cdef class HTTPServer:
    cdef public object handler, connections, _server, _sweeper, fast
    cdef public Py_ssize_t max_body
    cdef public double keepalive_s, request_timeout_s

cdef class ServerConnection:
    cdef public HTTPServer server
    cdef public object transport, parser, pending, _out, _url, _headers, _body
    cdef public bint closed, refused, paused, writable, _flush_due, _in_head
    cdef public double last, begun
    cdef public Py_ssize_t _fed, _size, _head

cdef class _Exchange:
    cdef public object data, done, failed
    cdef public double deadline

cdef class UpstreamConnection:
    cdef public UpstreamPool pool
    cdef public object transport, inflight, reason, _buffer
    cdef public double idle_since
    cdef public bint closed

cdef class UpstreamPool:
    cdef public object host, loop, conns, idle, _queue, answered, last
    cdef public int port, max_connections, connecting
    cdef public double max_idle_s
    cdef public bint closed, _flush_due
