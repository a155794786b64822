"""dhgq's benchmarks: ``python -m bench`` measures, on one machine in one run, what the queue
costs (against plain Procrastinate, BullMQ with status writes, and pgbench as the ceiling), how
fast a finished stage wakes the next, what the media stages cost, and how workers behave at
scale; it writes the figures with the machine's details to ``docs/benchmarks.md``.
"""
