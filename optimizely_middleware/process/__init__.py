"""What the package knows about the process it runs in (base layer).

* :mod:`.hooks`: every process-wide hook (exit, fork, garbage collection), in
  a stated order, and the one fork check each stateful part registers with.
* :mod:`.uwsgi`: uWSGI's own exit path, fork and thread switch.

Usage::

    from optimizely_middleware.process import hooks

    hooks.on_fork(my_pool)   # my_pool.after_fork_in_child() runs once in a forked child
"""
