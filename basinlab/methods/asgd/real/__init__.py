"""Real asynchronous SGD: a parameter server in the training process and N worker processes (--real).

    method.py    the checks of --real, --fixed-delay, --max-delay, --on-worker-loss; the delays.csv callback
    server.py    the server's step strategy: one arriving gradient per step, the delay rules, sync points
    workers.py   starting, hearing from and ending the worker processes (TCP, HMAC-authenticated, no pickle)
    worker.py    a worker process: the run's model and data, its share of each epoch's batches
    wire.py      the byte layout of the messages
    delays.py    delays.csv and the epoch's delay columns
"""
