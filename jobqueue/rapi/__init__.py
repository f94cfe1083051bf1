"""jobqueue-rapi: Ganeti's remote API for jobs and filters, Prometheus metrics, a dashboard.

A separate daemon that reaches the master only through LUXI, with the
project's own client (``jobqueue.luxi.client``), so nothing it does can
harm the queue beyond what a LUXI client can. The modules, in the order a
request meets them:

``main``        the command line, TLS, the event loop, signals
``app``         the aiohttp application: routes, the access and error middlewares
``access``      who may do what: HTTP basic auth, read and write rights, same-origin
``users``       the users file (Ganeti's format), reloaded when it changes
``answers``     errors as Ganeti's RAPI gives them (status and JSON body)
``master``      LUXI calls in a small thread pool, one client per thread
``resources``   Ganeti's ``/version``, ``/2/jobs``, ``/2/filters`` resources
``exposition``  ``/metrics``: QueryMetrics turned into Prometheus' text format
``dashboard``   ``/``: the page, its static files and its live event streams
``feed``        the shared poller behind the dashboard's live job list
"""
