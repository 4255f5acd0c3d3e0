"""Recipes: flask-goelect with the tools apps already use, each a tested example.

* :mod:`.scheduler`: Flask-APScheduler in every worker of every node; the job
  runs once per interval in the whole cluster (``@elect.leader_only``).
* :mod:`.consumer`: a queue consumer that runs on the leader only
  (``@elect.leader_task``, declared at module level before ``init_app``).
* :mod:`.fencing`: the term carried into a database write, so that a stale
  leader's write is refused (SQLite: a conditional ``UPDATE`` on the highest
  term seen).

Each module has a ``create_app(config)`` factory, the recipe itself, and a
``serve()`` entry point for a WSGI server (``gunicorn -w 3
'example_app.recipes.scheduler:serve()'``) that reads the node's options from
``EXAMPLE_ARGS`` like ``example_app.wsgi``. ``docs/recipes.md`` walks through them.
"""
