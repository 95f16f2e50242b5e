"""Engine: model, router, expert adapters, KV sessions, worker thread, grounded answers."""
