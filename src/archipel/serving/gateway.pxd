# Types of gateway.py's classes when scripts/build_native.py compiles it with Cython (pure Python mode: gateway.py
# runs unchanged without it). See _native/__init__.py.
from .http1 cimport Request, ServerConnection

cdef class _Replica:
    cdef public object id, deployment, site, jurisdiction, url, _pool, site_header, answered
    cdef public int version, in_flight, failures, ejections, served
    cdef public double ejected_until, latency_s
    cdef public bint healthy

cdef class _Deployment:
    cdef public object name, model, version, subjects, replicas, canary_version
    cdef public bint prefer_local
    cdef public double canary_weight

cdef class _Route:
    cdef public object path, counted, body, headers, deployment, allowed, origin, prefix
    cdef public int status
    cdef public bint cacheable

cdef class Gateway:
    cdef public object workspace, engine, config, deployments, replicas, tokens, _verifying, answers, _decisions
    cdef public object _allowed_cache, _routes, monitoring, _tasks, _audited, _secret, fast, _answered
    cdef public object _read
    cdef public bint loaded, _metrics_asked

cdef class _Call:
    cdef public Gateway gateway
    cdef public object conn
    cdef public Request request
    cdef public object deployment, allowed, origin, data, error, replica, tried
    cdef public int attempt
    cdef public double deadline, sent
