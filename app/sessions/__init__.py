"""Sessions: admission, the holder's drain loop, cancel/stop/reset, run records."""
