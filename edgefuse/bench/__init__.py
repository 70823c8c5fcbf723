"""The benchmarks behind ``edgefuse bench`` (see docs/BENCHMARKS.md for the figures).

``edgefuse bench transport`` measures publish-to-receive latency and throughput across
processes for edgefuse's transports and for peers (plain pyzmq, zenoh, iceoryx2, a memcpy
floor) side by side; :func:`edgefuse.bench.cli.main` parses the command line. Nothing is
imported here, so that the benchmark's worker processes start without loading the rest.
"""
