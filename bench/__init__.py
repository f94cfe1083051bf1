"""Benchmark harness for jobqueue (issue 8): ``python -m bench.run --quick|--full``.

Sections, in the order they run:

1. ``disk``    small-file write + fsync + rename: the ceiling for durable submission
2. ``submit``  SubmitJob / SubmitManyJobs throughput and latency
3. ``peers``   the same no-op jobs through Huey-SQLite, RQ+Redis and task-spooler
   ``e2e``     our end-to-end throughput, and our ratio to each peer
4. ``watch``   WaitForJobChange notification latency, alone and with many waiters
5. ``scale``   start-up, QueryJobs, archive, RSS and latency with 10k / 100k jobs
6. ``cli``     ``jobctl list`` start-up against a bare interpreter
7. ``controls`` scheduled starts, jobs held by a PAUSE rule, filter rules' cost
8. ``ha``      the queue in etcd: submission and end to end beside the file
               store and Huey-SQLite, and failover time (kill -9 to takeover)
"""
